"""Healthy nodes of ``lora-gateway demo`` stay quiet (issue 11, third pass): the demo's
simulated nodes (firmware_bridge.sensor_nodes, LPP-quantised temperature and humidity, a
daily cycle with white noise), scored offline as the daemon scores them
(models.evaluate.score_recording), with the bundled model. Deterministic: the live demo
starts its simulated day at the wall-clock time; here at fixed phases. Numbers in the
comments were measured on these seeded nodes (``bench/demo_seeds.py --offline`` runs the
whole ten seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.sensor_nodes import SensorNode, lpp_values
from models.evaluate import run_model, score_recording
from models.scoring.calibration import SeriesCalibration
from models.scoring.profile import fit_profile, profile_distance, profile_shrinkage
from models.scoring.settings import settings_from
from models.scoring.tail import _gpd_quantile, _gpd_quantiles, fold_slices, tail_quantile, tail_quantile_bound

pytest.importorskip("onnxruntime")

CAL = 1008  # the demo's week of 10-minute readings
OLD = {"adapt_below": 0.5, "fold_shrinkage": 0.0, "threshold_confidence": 0.0}  # the second pass


def node(seed: int, index: int, rows: int, phase: float = 0.0) -> np.ndarray:
    """Temperature and humidity of a healthy demo node as the gateway decodes them."""
    t0 = 1.7e9 - (1.7e9 % 86400) + phase * 86400
    sensor = SensorNode(index, seed, 600.0)
    return np.array([[v["temperature"], v["humidity"]] for v in (lpp_values(sensor.reading(k, t0)) for k in range(rows))])


def test_fold_profiles_are_shrunk_like_the_device_profile(session, manifest) -> None:  # type: ignore[no-untyped-def]
    """The held-out distances set the distance threshold; they must not be smaller than
    what the device's own profile gives. A fold's profile fitted on fewer windows got a
    larger OAS shrinkage, so its distances were *smaller* than the in-sample ones (median
    0.158 against 0.163 on seed 4 node 2, which then alarmed at 1.78); shrunk with the
    device profile's intensity they are larger (0.165), as held-out values should be."""
    settings = settings_from(manifest)
    cal = SeriesCalibration(2, CAL)
    cal.update(node(4, 2, CAL))
    windows = cal.calibration_windows(manifest.window_length)
    flat = run_model(session, windows)["embedding"].reshape(len(windows), -1).astype(np.float64)
    inside = float(np.median(profile_distance(flat, *fit_profile(flat, settings))))
    medians = {}
    for lam in (None, profile_shrinkage(flat, settings)):
        held = np.empty(len(flat))
        for train, block in fold_slices(len(flat), 5, manifest.window_length):
            held[block] = profile_distance(flat[block], *fit_profile(flat[train], settings, lam))
        medians[lam is None] = float(np.median(held))
    assert medians[True] < inside < medians[False]


def test_healthy_demo_nodes_stay_quiet(session, manifest) -> None:  # type: ignore[no-untyped-def]
    """The two healthy nodes that alarmed in the live demo (seed 4 node 2, seed 5 node 6),
    at four phases of the simulated day, 900 readings scored after the week of calibration
    (the live demo scores about 790): no alarm. With the second pass's settings seed 4
    node 2 alarmed at two of the phases (scores 1.54 and 1.78, the distance on humidity;
    seed 5 node 6 reached 1.12-1.20 here, and alarmed at 3 of 4 phases over 3,000
    readings)."""
    settings, old = settings_from(manifest), settings_from(manifest, **OLD)
    alarmed_before = []
    for seed, index in ((4, 2), (5, 6)):
        for phase in (0.0, 0.25, 0.5, 0.75):
            x = node(seed, index, CAL + 900, phase)
            r = score_recording(x, session, manifest.window_length, CAL, settings, with_pca=False)
            assert not r.alert.any(), (seed, index, phase, float(np.nanmax(r.score)))
            before = score_recording(x, session, manifest.window_length, CAL, old, with_pca=False)
            if before.alert.any():
                alarmed_before.append((seed, index, phase))
    assert alarmed_before == [(4, 2, 0.0), (4, 2, 0.75)]


def test_profile_mean_does_not_drift_on_a_stationary_node(session, manifest) -> None:  # type: ignore[no-untyped-def]
    """The profile mean learns only from windows below ``adapt_below``. Inside the normal
    range (0.5, the second pass) that gate fed it a biased part of normal (the phases of
    the day that score low), the mean moved towards them and the other phases scored
    higher and higher: on seed 4 node 2 the windows at or over 1.0 went from 0.15 % of the
    first 6,000 (42 days) to 0.9 % of the last 6,000 (4 alarms); gated at the alert
    threshold, 0.08 % and 0.02 % (no alarm)."""
    x = node(4, 2, CAL + 12000)
    rates = {}
    for name, settings in (("now", settings_from(manifest)), ("before", settings_from(manifest, **OLD))):
        r = score_recording(x, session, manifest.window_length, CAL, settings, with_pca=False)
        s = r.score[CAL:]
        rates[name] = (float(np.mean(s[:6000] >= 1.0)), float(np.mean(s[-6000:] >= 1.0)), bool(r.alert.any()))
    assert rates["now"][1] <= max(2 * rates["now"][0], 1e-3) and not rates["now"][2], rates
    assert rates["before"][1] > 3 * rates["before"][0] and rates["before"][2], rates


def test_tail_quantile_bound_covers_the_estimates_spread() -> None:
    """``tail_quantile_bound``: the tail fit does not depend on a row's order, is the order
    statistic inside the sample and extrapolates beyond it; the
    upper bound lies above the point estimate, by less the more the sample holds, is
    deterministic, and takes degenerate samples."""
    rng = np.random.default_rng(3)
    rows = np.sort(rng.standard_normal((5, 400)), axis=1)
    shuffled = rng.permuted(rows, axis=1)
    for alpha in (1e-4, 0.2):  # a row's order does not matter, row by row or in one call
        assert np.array_equal(_gpd_quantiles(shuffled, alpha), _gpd_quantiles(rows, alpha))
        assert [_gpd_quantile(r, alpha) for r in shuffled] == _gpd_quantiles(rows, alpha).tolist()
    # inside the sample: the split-conformal order statistic, rank ceil((n + 1)(1 - alpha))
    assert _gpd_quantile(rows[0], 0.2) == rows[0][int(np.ceil(401 * 0.8)) - 1]
    # beyond it: a tail extrapolated past the sample's largest value, larger for a rarer target
    assert rows[0][-1] < _gpd_quantile(rows[0], 1e-3) < _gpd_quantile(rows[0], 1e-4)
    widths = []
    for n in (300, 3000):
        v = np.exp(rng.standard_normal(n) * 0.3)
        point, bound = tail_quantile(v, 1e-4), tail_quantile_bound(v, 1e-4, 0.9, 32)
        assert bound > point and bound == tail_quantile_bound(v, 1e-4, 0.9, 32)
        widths.append(bound / point)
    assert widths[1] < widths[0]
    assert tail_quantile_bound(np.ones(50), 1e-4, 0.9) == pytest.approx(1.0)
    assert np.isnan(tail_quantile_bound(np.array([np.nan]), 1e-4, 0.9))
    assert tail_quantile_bound(np.arange(1.0, 9.0), 1e-4, 0.9, 32) >= 8.0  # 8 windows, one block

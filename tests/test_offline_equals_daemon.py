"""``model score``/``eval`` score a recording exactly as the daemon scores the same readings.

The daemon's per-reading path (``InferenceEngine.observe`` then ``score`` for each due window,
every window scored before the next reading, as its device rounds do) against
``models.evaluate.score_recording`` (what ``model score``/``eval`` run) on one seeded
three-channel series, same model, same calibration length: a slow legitimate rise the level
follows, a sustained level shift on one channel, and a small excursion on another that
scores around the threshold, so that both the level hold (``level_hold``) and the profile's
adaptation (``adapt_*``) act while windows straddle 1.0. Every score, every channel score
and every raise/clear decision must be equal; the offline tool until bench/RESULTS.md 26
updated the hold and the adaptation once per block of 64 windows and failed this.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.alerts.policy import anomaly_flags
from gateway.alerts.policy_config import AlertPolicyConfig
from gateway.metrics import Metrics
from gateway.pipeline.inference import InferenceEngine
from gateway.pipeline.windows import DeviceWindow
from models.evaluate import score_recording
from models.manifest import base_model_dir, load_manifest
from models.runtime import ModelRuntime
from models.scoring.settings import settings_from

CALIBRATION = 400
CHANNELS = ["temperature", "humidity", "current"]


def _series(seed: int, rows: int = 1700) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)
    x = np.empty((rows, 3))
    wander = np.cumsum(rng.standard_normal(rows)) * 0.02
    x[:, 0] = 20 + 1.5 * np.sin(2 * np.pi * t / 288) + 0.3 * rng.standard_normal(rows) + wander
    x[:, 1] = 60 - 2.0 * np.sin(2 * np.pi * t / 288) + 0.8 * rng.standard_normal(rows)
    x[:, 2] = 3.0 + 0.1 * rng.standard_normal(rows) + 0.0006 * np.maximum(t - CALIBRATION, 0)  # slow rise
    x[900:, 0] += 3.0  # a sustained shift on one channel
    bump = np.clip((t - 1250) / 20, 0, 1) * np.clip((1420 - t) / 20, 0, 1)
    x[:, 1] += 9.0 * bump  # an excursion whose edges score around the threshold
    return x


def _daemon(values: np.ndarray, runtime: ModelRuntime) -> tuple[np.ndarray, np.ndarray]:
    """Scores and channel scores per row from the daemon's per-reading path (NaN: unscored)."""
    engine = InferenceEngine(runtime, Metrics(), calibration_steps=CALIBRATION)
    window = DeviceWindow("node-1", CHANNELS, runtime.window_length)
    score = np.full(len(values), np.nan)
    channel_scores = np.full(values.shape, np.nan)
    for i, row in enumerate(values):
        window.push(dict(zip(CHANNELS, row.tolist())), float(i))
        due = engine.observe(window)
        if due is None:
            continue
        for _, s, details in engine.score([due]):
            score[i] = s
            channel_scores[i] = [details["channel_scores"][c] for c in CHANNELS]
    return score, channel_scores


@pytest.mark.parametrize("seed", [3, 8])
def test_model_score_equals_the_daemons_per_reading_path(seed: int) -> None:
    manifest = load_manifest(base_model_dir())
    settings = settings_from(manifest)
    runtime = ModelRuntime.load(base_model_dir(), ["CPUExecutionProvider"])
    from models.cli.training import _load_model

    _, session, _ = _load_model(None)  # the session ``model score`` runs
    values = _series(seed)
    daemon, daemon_channels = _daemon(values, runtime)
    offline = score_recording(values, session, manifest.window_length, CALIBRATION, settings)

    rows = slice(CALIBRATION, None)  # the rows the offline tool reports
    assert np.isnan(daemon[: CALIBRATION - 1]).all() and np.isfinite(daemon[CALIBRATION - 1 :]).all()
    # the series does what it is for: windows on both sides of the threshold, an alarm
    over = daemon[rows] >= 1.0
    assert 20 < over.sum() < 0.5 * over.size and ((daemon[rows] > 0.7) & ~over).sum() > 10
    # every score equal (the daemon's details round channel scores to 3 decimals)
    assert np.array_equal(offline.score[rows], daemon[rows].astype(np.float32))
    assert np.array_equal(np.round(offline.channel_scores[rows].astype(np.float64), 3), daemon_channels[rows])
    # and every raise/clear decision (the daemon's own lifecycle, rate limits off)
    config = AlertPolicyConfig(raise_threshold=settings["raise"], clear_threshold=settings["clear"],
                               raise_after=int(settings["raise_after"]), clear_after=int(settings["clear_after"]),
                               min_interval_s=0.0, max_alerts_per_device_per_hour=2**31 - 1)
    flags = np.array(anomaly_flags([s for s in daemon.tolist() if not math.isnan(s)], config))
    assert flags.any()
    assert offline.alert[rows].tolist() == flags[1:].tolist()  # flags[0]: the window ending at the last calibration row


@pytest.mark.parametrize("channels", [1, 2, 3, 8])
def test_a_windows_score_does_not_depend_on_what_shares_its_call(channels: int) -> None:
    """The daemon scores a round of devices in one ``score_details`` call and ``model score``
    scores a block of one device's windows (one state each) in one call: each window's score
    must equal its score alone, bit for bit. A non-contiguous precision stack once made
    einsum sum the rows of a batch in another order than a row alone (C = 1-3, the packed
    form: 19 of 100 distances differed in the last bit)."""
    from models.scoring.scorer import WindowScorer
    from models.scoring.stream import _proxies

    manifest = load_manifest(base_model_dir())
    runtime = ModelRuntime.load(base_model_dir(), ["CPUExecutionProvider"])
    scorer = WindowScorer(manifest)
    rng = np.random.default_rng(channels)
    cal = np.cumsum(rng.standard_normal((300, 32, channels)), axis=1).astype(np.float32) * 0.3
    state = scorer.new_state(channels)
    scorer.calibrate_windows(state, cal, runtime.run(cal))
    x = (np.cumsum(rng.standard_normal((64, 32, channels)), axis=1) * 0.4 + rng.normal(0, 1.5, (64, 1, 1))).astype(np.float32)
    out = runtime.run(x)
    together = scorer.score_details(x, out, _proxies(state, len(x))[1])
    for i in range(len(x)):
        alone = scorer.score_details(x[i : i + 1], {k: v[i : i + 1] for k, v in out.items()}, _proxies(state, 1)[1])
        assert together.score[i] == alone.score[0] and np.array_equal(together.channel_scores[i], alone.channel_scores[0])

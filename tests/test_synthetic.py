"""The seeded field-sensor generator: determinism, physics, labels, faults."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.synthetic import (
    FAULT_KINDS,
    SENSOR_KINDS,
    Fault,
    generate_device,
    normal_windows,
    random_device,
    standardize_series,
)

ALL_KINDS = tuple(SENSOR_KINDS)


def test_same_seed_same_arrays_different_seed_different() -> None:
    a = generate_device(7, 1000, kinds=ALL_KINDS, n_faults=4, fault_free_prefix=200)
    b = generate_device(7, 1000, kinds=ALL_KINDS, n_faults=4, fault_free_prefix=200)
    c = generate_device(8, 1000, kinds=ALL_KINDS, n_faults=4, fault_free_prefix=200)
    assert np.array_equal(a.values, b.values) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.values, c.values)


def test_values_finite_within_physical_range_and_quantised() -> None:
    dev = generate_device(1, 3000, kinds=ALL_KINDS, n_faults=8, fault_free_prefix=500)
    assert dev.values.shape == (3000, len(ALL_KINDS)) and np.isfinite(dev.values).all()
    for c, kind in enumerate(ALL_KINDS):
        spec = SENSOR_KINDS[kind]
        assert dev.values[:, c].min() >= spec.lo and dev.values[:, c].max() <= spec.hi
        steps = dev.clean[:, c] / spec.resolution
        assert np.allclose(steps, np.round(steps), atol=1e-6)


def test_diurnal_cycle_present_in_temperature() -> None:
    # 10-minute samples: 144 steps a day; autocorrelation at one day beats half a day
    dev = generate_device(3, 144 * 20, kinds=("temperature",), interval_s=600, events=False)
    x = dev.clean[:, 0] - dev.clean[:, 0].mean()
    day = float(np.corrcoef(x[:-144], x[144:])[0, 1])
    half = float(np.corrcoef(x[:-72], x[72:])[0, 1])
    assert day > 0.5 and day > half + 0.5


def test_humidity_anticorrelated_with_temperature() -> None:
    dev = generate_device(4, 2000, kinds=("temperature", "humidity"), events=False)
    assert np.corrcoef(dev.clean[:, 0], dev.clean[:, 1])[0, 1] < -0.3


def test_fault_free_without_faults() -> None:
    dev = generate_device(5, 1500, kinds=ALL_KINDS)
    assert not dev.labels.any() and np.array_equal(dev.values, dev.clean)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_is_labelled_where_injected(kind: str) -> None:
    fault = Fault(kind, (0,), 400, 460, 4.0)
    dev = generate_device(6, 1000, kinds=("temperature", "humidity"), faults=[fault], events=False)
    code = FAULT_KINDS.index(kind) + 1
    labelled = np.flatnonzero(dev.labels[:, 0] == code)
    assert labelled.size > 0 and labelled.min() >= 400 and labelled.max() < 460
    assert not dev.labels[:, 1].any() and not dev.labels[:400].any() and not dev.labels[460:].any()
    changed = np.flatnonzero(dev.values[:, 0] != dev.clean[:, 0])
    assert changed.size > 0 and changed.min() >= 400 and changed.max() < 460
    assert dev.step_labels[labelled].all()


def test_level_shift_size_in_normal_sigmas() -> None:
    fault = Fault("level_shift", (0, 1), 500, 700, 4.0)
    dev = generate_device(9, 1200, kinds=("pressure", "current", "battery"), faults=[fault], events=False)
    for c in (0, 1):
        sigma = dev.clean[:, c].std()
        shift = (dev.values[500:700, c] - dev.clean[500:700, c]).mean()
        assert 3.5 * sigma < shift < 4.5 * sigma
    assert np.array_equal(dev.values[:, 2], dev.clean[:, 2])


def test_random_faults_respect_prefix_and_do_not_overlap() -> None:
    dev = generate_device(11, 4000, kinds=ALL_KINDS, n_faults=10, fault_free_prefix=1000)
    assert len(dev.faults) >= 5
    assert not dev.labels[:1000].any()
    spans = sorted((f.start, f.end) for f in dev.faults)
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))


def test_unknown_kind_and_bad_fault_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown sensor kind"):
        generate_device(0, 100, kinds=("sonar",))
    with pytest.raises(ValueError, match="out of range"):
        generate_device(0, 100, faults=[Fault("stuck_at", (0,), 90, 120)])
    with pytest.raises(ValueError, match="unknown fault kind"):
        generate_device(0, 100, fault_kinds=("gremlins",))


def test_normal_windows_standardised_and_reproducible() -> None:
    w = normal_windows(3, 5000, 32)
    assert w.shape == (5000, 32) and w.dtype == np.float32 and np.isfinite(w).all()
    assert abs(float(w.mean())) < 0.15 and 0.7 < float(w.std()) < 1.3
    assert np.array_equal(w, normal_windows(3, 5000, 32))


def test_random_device_and_standardize_series() -> None:
    dev = random_device(21, 800)
    z = standardize_series(dev.values, calibration_steps=400)
    assert np.allclose(z[:400].mean(axis=0), 0.0, atol=1e-4)
    assert 1 <= dev.values.shape[1] <= len(SENSOR_KINDS)


def test_daemon_side_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, models.synthetic, models.datasets, models.manifest, models.evaluate, models.cli.training, "
        "models.scoring.scorer, models.scoring.calibration, models.pca_baseline, gateway.cli; gateway.cli.build_parser(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

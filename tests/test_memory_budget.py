"""Per-device memory of the daemon's live state: window, readings calibration, score
profile and alert-policy state, with the shipped model.

The target is 10,000 devices in at most 150 MB RSS with the model loaded (about 84 MB),
so at most about 6.5 KB of RSS per device (bench/memory.py measures the RSS; bench/RESULTS.md
section 4). This test counts the Python allocations (tracemalloc) of devices fed the way
the pipeline feeds them (policy, window store, inference engine, scores back into the
policy), after a first group has warmed every cache, so only per-device state is counted.
Measured when written: about 5.0 KB per device (2 channels; some of these short-calibrated
devices raise alerts, which adds their tracks); 14.2 KB before the per-device state was
made compact (bench/RESULTS.md section 4).
"""

from __future__ import annotations

import mmap
import threading
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

from gateway.alerts.policy import AlertPolicy, AlertPolicyConfig
from gateway.metrics import Metrics
from gateway.pipeline.inference import InferenceEngine
from gateway.pipeline.windows import WindowStore
from gateway.state import checkpoint
from gateway.state.checkpoint import Checkpointer, CheckpointStore
from gateway.state.codec import DeviceStateCodec
from gateway.types import RadioMeta, Reading

pytest.importorskip("onnxruntime")

from models.manifest import base_model_dir  # noqa: E402
from models.runtime import ModelRuntime  # noqa: E402

STEPS = 48  # calibration readings per device (17 calibration windows at T = 32)
READINGS = STEPS + 4  # then 4 scored windows each
BUDGET_BYTES = 6 * 1024


def _feed(devices: range, policy: AlertPolicy, store: WindowStore, engine: InferenceEngine) -> int:
    rng = np.random.default_rng(devices.start)
    scored = 0
    for k in range(READINGS):
        due = []
        for d in devices:
            r = Reading(f"a84041{d:010x}", 1_700_000_000.0 + 60 * k,
                        {"temperature": float(20 + 0.25 * rng.normal()), "humidity": float(60 + rng.normal())},
                        RadioMeta(rssi=float(-80 - k % 3), snr=7.5), f_cnt=k)
            policy.on_reading(r, 3.6, "V")
            item = engine.observe(store.add(r))
            if item is not None:
                due.append(item)
        for i in range(0, len(due), 64):
            for d, score, details in engine.score(due[i:i + 64]):
                policy.on_score(d.window.device_id, d.timestamp, score, details)
                scored += 1
    return scored


def test_live_state_per_device_within_budget() -> None:
    runtime = ModelRuntime.load(base_model_dir(), ["cpu"])
    metrics = Metrics()
    n, warm = 300, 30
    engine = InferenceEngine(runtime, metrics, calibration_steps=STEPS, calibration_windows=64)
    store = WindowStore(runtime.window_length, n + warm, metrics)
    policy = AlertPolicy(AlertPolicyConfig(max_devices=n + warm), metrics)
    assert _feed(range(warm), policy, store, engine) == warm * (READINGS - STEPS + 1)
    tracemalloc.start(1)
    try:
        before = tracemalloc.take_snapshot()
        scored = _feed(range(warm, warm + n), policy, store, engine)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert scored == n * (READINGS - STEPS + 1)  # every device calibrated and scoring
    assert len(store) == len(policy) == n + warm
    stats = after.compare_to(before, "lineno")
    per_device = sum(s.size_diff for s in stats) / n
    top = "; ".join(f"{s.traceback[0].filename.rsplit('/', 1)[-1]}:{s.traceback[0].lineno} {s.size_diff / n:.0f} B"
                    for s in stats[:6])
    assert per_device <= BUDGET_BYTES, f"{per_device:.0f} B per device (budget {BUDGET_BYTES}): {top}"


def test_a_checkpoint_holds_a_bounded_slice_of_its_blobs_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of every device encodes them into memory maps one slice at a time: at
    most (_QUEUED + 2) slices are alive at once, each in at most two maps of ``slice_bytes``
    (bench/RESULTS.md 27: holding all of them was the 197 MB peak of RESULTS 22). The bound
    holds whatever the writer thread's pace, so this does not depend on timing."""
    runtime = ModelRuntime.load(base_model_dir(), ["cpu"])
    metrics = Metrics()
    n = 60
    engine = InferenceEngine(runtime, metrics, calibration_steps=STEPS, calibration_windows=64)
    store = WindowStore(runtime.window_length, n, metrics)
    policy = AlertPolicy(AlertPolicyConfig(max_devices=n), metrics)
    _feed(range(n), policy, store, engine)
    lock, live, peak = threading.Lock(), [0], [0]

    class CountedMap(mmap.mmap):
        def __init__(self, fileno: int, length: int) -> None:
            with lock:
                live[0] += length
                peak[0] = max(peak[0], live[0])
            weakref.finalize(self, _release, length)

    def _release(length: int) -> None:
        with lock:
            live[0] -= length

    monkeypatch.setattr(checkpoint.mmap, "mmap", CountedMap)
    slice_bytes = 16 * 1024
    codec = DeviceStateCodec(store, engine, policy)
    cp = Checkpointer(CheckpointStore(tmp_path / "cp.sqlite", metrics), codec, metrics, 0.0, slice_bytes=slice_bytes)
    for d in range(n):
        cp.mark(f"a84041{d:010x}")
    assert cp.capture(1)
    cp._queue.join()
    total = metrics.get("checkpoint_devices_written_total")
    blob_bytes = sum(len(b) for b in cp.store.devices())
    cp.close()
    assert total == n and blob_bytes > 10 * slice_bytes  # the whole checkpoint is many slices
    assert live[0] == 0 and peak[0] <= (checkpoint._QUEUED + 2) * 2 * slice_bytes, peak[0]

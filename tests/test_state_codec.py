"""Per-device state codec (``gateway.state.codec``) and checkpoints (``gateway.state.checkpoint``).

Real parts: the bundled base model on ONNX Runtime, the window store, the inference
engine and the alert policy; real SQLite files; a real child process killed with SIGKILL
in the middle of checkpoint writes.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from gateway.alerts.policy import AlertPolicy, AlertPolicyConfig
from gateway.metrics import Metrics
from gateway.pipeline.inference import InferenceEngine
from gateway.pipeline.windows import WindowStore
from gateway.state.checkpoint import BlobBuffer, Checkpointer, CheckpointStore
from gateway.state.codec import DeviceStateCodec, StateFormatError
from gateway.types import RadioMeta, Reading
from models.manifest import base_model_dir
from models.runtime import ModelRuntime
from tests.conftest import REPO

STEPS = 64
DEVICES = [f"a84041{d:010x}" for d in range(5)]


class Parts:
    """One gateway's device state owners, fed the way the pipeline feeds them."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.metrics = Metrics()
        self.engine = InferenceEngine(runtime, self.metrics, calibration_steps=STEPS, calibration_windows=32)
        self.store = WindowStore(runtime.window_length, 100, self.metrics)
        self.policy = AlertPolicy(AlertPolicyConfig(raise_threshold=20.0, clear_threshold=10.0), self.metrics)
        self.codec = DeviceStateCodec(self.store, self.engine, self.policy)

    def feed(self, readings: list[Reading]) -> list[tuple[str, float, list[str]]]:
        """(device, score, alert keys) per scored window, batches of 8 in arrival order."""
        out: list[tuple[str, float, list[str]]] = []
        due = []
        for r in readings:
            self.policy.on_reading(r, 3.6, "V")
            item = self.engine.observe(self.store.add(r))
            if item is not None:
                due.append(item)
        for i in range(0, len(due), 8):
            for d, score, details in self.engine.score(due[i:i + 8]):
                alerts = self.policy.on_score(d.window.device_id, d.timestamp, score, details)
                out.append((d.window.device_id, round(score, 5), [a.key for a in alerts]))
        return out


def readings(k0: int, k1: int, shift_from: int = 10**9) -> list[Reading]:
    rng = np.random.default_rng(k0)
    out = []
    for k in range(k0, k1):
        for i, dev in enumerate(DEVICES):
            temp = 20 + 3 * math.sin(k / 20 + i) + 0.2 * rng.normal() + (12.0 if i == 2 and k >= shift_from else 0.0)
            out.append(Reading(dev, 1_700_000_000.0 + 60 * k, {"temperature": float(temp), "humidity": float(60 + rng.normal())},
                               RadioMeta(rssi=-80.0, snr=7.5), f_cnt=k))
    return out


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return ModelRuntime.load(base_model_dir(), ["cpu"])


def test_restored_devices_score_from_their_first_reading_exactly_as_without_the_restart(runtime: ModelRuntime) -> None:
    straight, first = Parts(runtime), Parts(runtime)
    history = readings(0, STEPS + 40)
    later = readings(STEPS + 40, STEPS + 90, shift_from=STEPS + 60)
    straight.feed(history)
    first.feed(history)
    blob = first.codec.dump_devices(DEVICES)
    restored = Parts(runtime)
    report = restored.codec.restore_devices(blob)
    assert (report.devices, report.windows, report.score_profiles, report.recalibrating) == (5, 5, 5, 0)
    expected = straight.feed(later)
    got = restored.feed(later)
    assert got[: len(DEVICES)] == expected[: len(DEVICES)]  # the first reading after the restore is scored
    assert got == expected
    assert any(keys for _, _, keys in got)  # the shift raised an alert, with the same key
    assert restored.metrics.get("devices_calibrated_total") == 0


def test_the_cross_channel_fit_round_trips_and_restored_devices_score_as_without_the_restart() -> None:
    """``cross_channel`` 1 (models.scoring.cross): the score state's cross-channel fit and
    threshold travel in the blob, and the restored devices score exactly as before."""
    runtime = ModelRuntime.load(base_model_dir(), ["cpu"])
    runtime.manifest = {**runtime.manifest, "thresholds": {**runtime.manifest.get("thresholds", {}), "cross_channel": 1}}
    straight, first = Parts(runtime), Parts(runtime)
    history = readings(0, STEPS + 40)
    later = readings(STEPS + 40, STEPS + 90, shift_from=STEPS + 60)
    straight.feed(history)
    first.feed(history)
    restored = Parts(runtime)
    report = restored.codec.restore_devices(first.codec.dump_devices(DEVICES))
    assert (report.devices, report.score_profiles, report.recalibrating) == (5, 5, 0)
    before = first.engine.export_device(first.store.get(DEVICES[0]))["score"]
    after = restored.engine.export_device(restored.store.get(DEVICES[0]))["score"]
    assert before.cross is not None and before.cross.shape == (2 + 4,)
    np.testing.assert_array_equal(after.cross, before.cross)
    assert after.cross_threshold == before.cross_threshold
    assert restored.feed(later) == straight.feed(later)


def test_a_device_still_calibrating_continues_where_it_stopped(runtime: ModelRuntime) -> None:
    straight, first = Parts(runtime), Parts(runtime)
    history = readings(0, STEPS // 2)
    straight.feed(history)
    first.feed(history)
    restored = Parts(runtime)
    restored.codec.restore_devices(first.codec.dump_devices(DEVICES))
    later = readings(STEPS // 2, STEPS + 30)
    assert restored.feed(later) == straight.feed(later)


def test_state_from_another_model_keeps_standardisation_and_recalibrates_the_scores(runtime: ModelRuntime) -> None:
    first = Parts(runtime)
    first.feed(readings(0, STEPS + 20))
    blob = first.codec.dump_devices(DEVICES)
    other = ModelRuntime.load(base_model_dir(), ["cpu"])
    other.manifest = {**other.manifest, "version": "other-version"}
    restored = Parts(other)
    report = restored.codec.restore_devices(blob)
    assert (report.windows, report.standardised, report.score_profiles, report.recalibrating) == (5, 5, 0, 5)
    assert restored.policy.export_device(DEVICES[0]).last_seen == first.policy.export_device(DEVICES[0]).last_seen
    assert restored.feed(readings(STEPS + 20, STEPS + 30)) == []  # re-learning from scored windows
    assert restored.metrics.get("devices_calibrated_total") == 0  # not from readings: standardisation kept
    assert restored.feed(readings(STEPS + 30, STEPS + 80))  # scoring again after calibration_windows


def test_a_handoff_moves_devices_and_forgets_them_at_the_sender(runtime: ModelRuntime, tmp_path: Path) -> None:
    """dump_devices on one gateway, restore_devices on another, forget_devices at the
    sender: the receiver scores them from the next reading, the sender's checkpoint drops them."""
    sender, receiver = Parts(runtime), Parts(runtime)
    sender.feed(readings(0, STEPS + 20))
    cp = Checkpointer(CheckpointStore(tmp_path / "cp.sqlite", sender.metrics), sender.codec, sender.metrics, 0.0)
    for d in DEVICES:
        cp.mark(d)
    cp.capture(10, wait=True)
    moved = DEVICES[:2]
    report = receiver.codec.restore_devices(sender.codec.dump_devices(moved + ["unknown-device"]))
    assert (report.devices, report.score_profiles) == (2, 2)
    assert sender.codec.forget_devices(moved) == 2
    assert sender.store.get(moved[0]) is None and sender.policy.export_device(moved[0]) is None
    cp.close(seq=11)
    store = CheckpointStore(tmp_path / "cp.sqlite", Metrics())
    assert len(list(store.devices())) == len(DEVICES) - 2
    store.close()
    first = receiver.feed(readings(STEPS + 20, STEPS + 21))
    assert sorted(d for d, _, _ in first) == sorted(moved)


def test_damaged_records_are_skipped_and_counted(runtime: ModelRuntime) -> None:
    first = Parts(runtime)
    first.feed(readings(0, 10))
    good = first.codec.dump_device(DEVICES[0])
    assert good is not None
    restored = Parts(runtime)
    from gateway.state.codec import RestoreReport

    report = RestoreReport()
    assert restored.codec.restore_device(good[: len(good) // 2], report) is None
    assert restored.codec.restore_device(b"garbage", report) is None
    assert report.skipped == 2 and len(restored.store) == 0
    with pytest.raises(StateFormatError):
        restored.codec.restore_devices(b"nope")


def test_a_checkpoint_round_trip_restores_position_and_devices(runtime: ModelRuntime, tmp_path: Path) -> None:
    first = Parts(runtime)
    first.feed(readings(0, STEPS + 5))
    written: list[int] = []
    cp = Checkpointer(CheckpointStore(tmp_path / "cp.sqlite", first.metrics), first.codec, first.metrics, 0.0,
                      on_written=written.append)
    for d in DEVICES:
        cp.mark(d)
    cp.close(seq=1234)
    assert written == [1234]
    restored = Parts(runtime)
    cp2 = Checkpointer(CheckpointStore(tmp_path / "cp.sqlite", restored.metrics), restored.codec, restored.metrics, 0.0)
    seq, report = cp2.restore()
    cp2.close()
    assert seq == 1234 and report is not None and report.devices == 5 and report.score_profiles == 5


def test_blob_buffer_copies_blobs_into_memory_maps_released_with_their_views() -> None:
    buf = BlobBuffer(chunk_bytes=64)
    blobs = [bytes([i]) * n for i, n in enumerate((10, 40, 30, 200, 5))]
    views = [buf.add(b) for b in blobs]
    assert [bytes(v) for v in views] == blobs and buf.nbytes == sum(map(len, blobs))
    assert all(v.readonly for v in views)
    maps = {id(v.obj) for v in views}
    assert len(maps) == 3  # 10 + 40 in the first map, 30 in the next, 200 alone (larger than a chunk); 5 fits after 30
    gone = weakref.ref(views[3].obj)
    del views[3]
    buf = BlobBuffer()  # the buffer's own reference to its current map goes too
    assert gone() is None


def test_a_background_checkpoint_writes_each_devices_blob_and_keeps_none(runtime: ModelRuntime, tmp_path: Path) -> None:
    parts = Parts(runtime)
    parts.feed(readings(0, STEPS + 5))
    store = CheckpointStore(tmp_path / "cp.sqlite", parts.metrics)
    cp = Checkpointer(store, parts.codec, parts.metrics, 0.0)
    for d in DEVICES:
        cp.mark(d)
    expected = {d: parts.codec.dump_device(d, parts.codec.model_key()) for d in DEVICES}
    assert cp.capture(77)
    parts.feed(readings(STEPS + 5, STEPS + 8))  # the pipeline goes on while the writer commits
    cp._queue.join()
    assert sorted(store.devices()) == sorted(expected.values())
    assert not cp._failed_ids and cp._queue.empty()
    cp.close()


def test_a_checkpoint_in_slices_is_one_transaction_and_a_failed_one_goes_whole_into_the_next(
        runtime: ModelRuntime, tmp_path: Path) -> None:
    parts = Parts(runtime)
    parts.feed(readings(0, STEPS + 5))
    store = CheckpointStore(tmp_path / "cp.sqlite", parts.metrics)
    cp = Checkpointer(store, parts.codec, parts.metrics, 0.0, slice_bytes=1)  # one device per slice
    key = parts.codec.model_key()
    for d in DEVICES:
        cp.mark(d)
    put_rows, calls = store.put_rows, []

    def failing_third(rows: list[tuple[str, float, bytes | memoryview]]) -> None:
        calls.append(len(rows))
        if len(calls) == 3:
            raise sqlite3.OperationalError("disk full")
        put_rows(rows)

    store.put_rows = failing_third  # type: ignore[method-assign]
    assert cp.capture(5)
    cp._queue.join()
    assert calls == [1, 1, 1]  # the rest of the batch skipped after the failure
    assert store.meta() is None and list(store.devices()) == []  # rolled back whole: nothing of it in the file
    assert parts.metrics.get("checkpoint_errors_total", op="write") == 1 and cp._failed_ids == set(DEVICES)
    store.put_rows = put_rows  # type: ignore[method-assign]
    parts.feed(readings(STEPS + 5, STEPS + 6))
    expected = {d: parts.codec.dump_device(d, key) for d in DEVICES}
    assert cp.capture(9)  # no device marked since: the failed ones are encoded again, as they are now
    cp._queue.join()
    meta = store.meta()
    assert meta is not None and meta.seq == 9 and sorted(store.devices()) == sorted(expected.values())
    assert not cp._failed_ids and parts.metrics.get("checkpoints_total") == 1
    cp.close()


def test_the_final_checkpoint_takes_the_devices_of_a_write_that_fails_while_it_waits(
        runtime: ModelRuntime, tmp_path: Path) -> None:
    parts = Parts(runtime)
    parts.feed(readings(0, STEPS + 5))
    store = CheckpointStore(tmp_path / "cp.sqlite", parts.metrics)
    cp = Checkpointer(store, parts.codec, parts.metrics, 0.0)
    put_rows, go = store.put_rows, threading.Event()

    def slow_failure(rows: list[tuple[str, float, bytes | memoryview]]) -> None:
        store.put_rows = put_rows  # type: ignore[method-assign]
        go.wait(10)
        raise sqlite3.OperationalError("disk full")

    store.put_rows = slow_failure  # type: ignore[method-assign]
    for d in DEVICES:
        cp.mark(d)
    assert cp.capture(5)  # its write is held, then fails
    threading.Timer(0.2, go.set).start()  # after close() below has begun waiting
    expected = {d: parts.codec.dump_device(d, parts.codec.model_key()) for d in DEVICES}
    cp.close(seq=6)  # nothing marked since: only the failed write's devices can fill it
    check = CheckpointStore(tmp_path / "cp.sqlite", Metrics())
    meta = check.meta()
    assert meta is not None and meta.seq == 6 and sorted(check.devices()) == sorted(expected.values())
    check.close()


def test_a_checkpoint_from_an_older_model_says_what_it_kept(runtime: ModelRuntime, tmp_path: Path) -> None:
    first = Parts(runtime)
    first.feed(readings(0, STEPS + 5))
    cp = Checkpointer(CheckpointStore(tmp_path / "cp.sqlite", first.metrics), first.codec, first.metrics, 0.0)
    for d in DEVICES:
        cp.mark(d)
    cp.close(seq=77)
    newer = ModelRuntime.load(base_model_dir(), ["cpu"])
    newer.manifest = {**newer.manifest, "version": "2.0-test"}
    restored = Parts(newer)
    cp2 = Checkpointer(CheckpointStore(tmp_path / "cp.sqlite", restored.metrics), restored.codec, restored.metrics, 0.0)
    seq, report = cp2.restore()
    cp2.close()
    assert seq == 77 and report is not None
    assert (report.standardised, report.score_profiles, report.recalibrating) == (5, 0, 5)
    (note,) = report.notes
    assert "serving" in note and "2.0-test" in note and "score profiles recalibrate" in note


def test_an_unreadable_checkpoint_is_moved_aside_and_the_gateway_starts_empty(runtime: ModelRuntime, tmp_path: Path) -> None:
    path = tmp_path / "cp.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(5000))
    parts = Parts(runtime)
    cp = Checkpointer(CheckpointStore(path, parts.metrics), parts.codec, parts.metrics, 0.0)
    assert cp.restore() == (0, None)
    cp.close()
    assert parts.metrics.get("checkpoint_errors_total", op="open_corrupt") == 1
    assert list(tmp_path.glob("cp.sqlite.corrupt-*"))


_WRITER = """
import sys
from pathlib import Path
from gateway.metrics import Metrics
from gateway.state.checkpoint import CheckpointStore
store = CheckpointStore(Path(sys.argv[1]), Metrics())
blob = bytes(20000)
seq = 0
print("ready", flush=True)
while True:
    seq += 1
    store.write(seq, "k", "m@1", {f"dev-{i:05d}": (float(seq), blob[:-1] + bytes([seq % 256])) for i in range(200)}, set())
"""


def test_sigkill_during_checkpoint_writes_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    """Each write rewrites 200 rows of 20 kB and moves the position, in one transaction:
    killed at any moment, the file holds one whole checkpoint (every row of the same write)."""
    path = tmp_path / "cp.sqlite"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with proc.stdout:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(0.3 + 0.2 * attempt)  # some writes done, one under way
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        store = CheckpointStore(path, Metrics())
        meta = store.meta()
        assert meta is not None and meta.seq >= 1
        blobs = list(store.devices())
        store.close()
        assert len(blobs) == 200
        assert {b[-1] for b in blobs} == {meta.seq % 256}  # rows and position from the same write

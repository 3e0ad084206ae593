"""The readings kept around model alerts (gateway.alerts.alert_windows) and the reader that
joins them with operators' verdicts (models.feedback_labels): contents, bounds, counters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gateway.alerts.alert_windows import AlertWindowKeeper
from gateway.alerts.feedback import record_feedback
from gateway.alerts.policy_state import alert_key
from gateway.config import validate_config
from gateway.metrics import Metrics
from gateway.pipeline.windows import WindowStore
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.types import Alert, RawUplink, Reading
from models.feedback_labels import WINDOWS_FILE, WINDOWS_PREVIOUS, find_window, labelled_windows

T = 8
UPLINK = RawUplink(device_id="x", received_at=0.0, payload=b"")


def _reading(dev: str, k: int, temp: float | None = None) -> Reading:
    values = {"h": 50.0 + k}
    if temp is None or math.isfinite(temp):  # NaN: the reading lacks the channel
        values["t"] = 20.0 + k if temp is None else temp
    return Reading(device_id=dev, timestamp=1000.0 + 60 * k, values=values)


def _alert(dev: str, state: str, ts: float, start: float, kind: str = "anomaly") -> Alert:
    return Alert(device_id=dev, kind=kind, state=state, severity="warning", timestamp=ts, message="",  # type: ignore[arg-type]
                 key=alert_key(dev, kind, state, start), score=2.0, details={"episode_start": start})


class Rig:
    def __init__(self, tmp_path: Path, **kwargs: int) -> None:
        self.metrics = Metrics()
        self.store = WindowStore(T, 100, self.metrics)
        self.keeper = AlertWindowKeeper(tmp_path, self.metrics, **kwargs)
        self.keeper.windows_of = lambda: self.store
        self.keeper.start()
        self.k: dict[str, int] = {}

    def feed(self, dev: str, n: int, temp: float | None = None) -> float:
        for _ in range(n):
            k = self.k.get(dev, 0)
            self.k[dev] = k + 1
            r = _reading(dev, k, temp)
            self.keeper.observe_reading(r, None, UPLINK)  # the pipeline: observers, then the window
            self.store.add(r)
        return 1000.0 + 60 * (self.k[dev] - 1)

    def records(self, name: str = WINDOWS_FILE) -> list[dict]:  # type: ignore[type-arg]
        path = self.keeper.directory / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_window_and_following_rows_until_the_clear(tmp_path: Path) -> None:
    rig = Rig(tmp_path, after_rows=10)
    ts = rig.feed("d1", 12)
    raised = _alert("d1", "raised", ts, ts)
    rig.keeper.on_alert(raised)
    rig.keeper.on_alert(_alert("d1", "raised", ts, ts, kind="battery_low"))  # rule alerts keep nothing
    rig.feed("d1", 3, temp=math.nan)
    cleared = _alert("d1", "cleared", rig.feed("d1", 1), ts)
    rig.keeper.on_alert(cleared)
    rig.keeper.stop()
    recs = rig.records()
    assert [r.get("complete") for r in recs] == [False, None, True]  # preliminary, alias, complete
    assert recs[1] == {"key": cleared.key, "alias_of": raised.key}
    done = recs[2]
    assert done["key"] == raised.key and done["channels"] == ["h", "t"] and done["raise_row"] == T - 1
    assert len(done["values"]) == T + 4 and done["cleared_at"] == cleared.timestamp
    assert done["values"][T - 1] == [50.0 + 11, 20.0 + 11]  # the raise reading, in physical units
    assert done["values"][T] == [50.0 + 12, None]  # a channel the reading lacked: missing
    assert done["timestamps"][:T - 1] == [None] * (T - 1) and done["timestamps"][T - 1] == ts
    assert find_window(tmp_path, cleared.key)["key"] == raised.key  # type: ignore[index]
    assert rig.metrics.get("alert_windows_written_total") == 3


def test_collections_are_bounded_and_cut_short_counted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, after_rows=50, max_pending=2)
    for dev in ("a", "b", "c"):
        ts = rig.feed(dev, T)
        rig.keeper.on_alert(_alert(dev, "raised", ts, ts))
    assert rig.keeper.pending() == 2 and rig.metrics.get("alert_windows_cut_short_total") == 1
    rig.keeper.on_alert(_alert("zz", "raised", 5.0, 5.0))  # a device without a window
    assert rig.metrics.get("alert_windows_dropped_total", reason="no_window") == 1
    rig.feed("b", 50)  # b's collection completes after 50 more readings
    assert rig.keeper.pending() == 1
    rig.keeper.stop()  # c's is written as it stands
    complete = [r for r in rig.records() if r.get("complete")]
    assert [(r["device_id"], len(r["values"])) for r in complete] == [("a", T), ("b", T + 50)]
    assert [r["device_id"] for r in rig.records() if r.get("complete") is False][-1] == "c"


def test_disk_budget_rotates_and_counts_what_is_lost(tmp_path: Path) -> None:
    rig = Rig(tmp_path, after_rows=0, max_bytes=65536, queue_size=1000)
    for i in range(400):
        ts = rig.feed(f"dev-{i}", T)
        rig.keeper.on_alert(_alert(f"dev-{i}", "raised", ts, ts))
    rig.keeper.stop()
    written = rig.metrics.get("alert_windows_written_total")
    lost = rig.metrics.get("alert_windows_dropped_total", reason="rotated")
    kept = len(rig.records()) + len(rig.records(WINDOWS_PREVIOUS))
    assert written == 800 and lost > 0 and kept + lost == written
    size = sum((tmp_path / n).stat().st_size for n in (WINDOWS_FILE, WINDOWS_PREVIOUS))
    assert size <= 65536 + 4096


def test_queue_full_is_counted_not_blocking(tmp_path: Path) -> None:
    rig = Rig(tmp_path, after_rows=0, queue_size=1)
    rig.keeper.stop()  # no writer: the queue takes one record, the rest are dropped
    rig.keeper._thread = None
    for i in range(5):
        ts = rig.feed(f"q{i}", T)
        rig.keeper.on_alert(_alert(f"q{i}", "raised", ts, ts))
    assert rig.metrics.get("alert_windows_dropped_total", reason="queue_full") >= 8


def test_verdicts_join_their_readings(tmp_path: Path) -> None:
    rig = Rig(tmp_path, after_rows=4)
    ts = rig.feed("d1", T)
    raised = _alert("d1", "raised", ts, ts)
    rig.keeper.on_alert(raised)
    rig.feed("d1", 4)
    ts2 = rig.feed("d2", T)
    rig.keeper.on_alert(_alert("d2", "raised", ts2, ts2))
    rig.keeper.stop()
    stored = record_feedback(tmp_path, raised.key, "false", "defrost")
    assert stored["device_id"] == "d1" and len(stored["window"]["values"]) == T + 4
    assert stored["alert"]["kind"] == "anomaly"
    record_feedback(tmp_path, _alert("d2", "raised", ts2, ts2).key, "confirmed")
    record_feedback(tmp_path, "unknown-alert", "confirmed")
    found = labelled_windows(tmp_path, ["t", "h"])
    by_dev = {w.device_id: w for w in found.windows}
    assert found.skipped == {"no_window": 1} and set(by_dev) == {"d1", "d2"}
    w = by_dev["d1"]
    assert w.label == "false_alarm" and w.note == "defrost" and w.raise_row == T - 1
    np.testing.assert_allclose(w.values[T - 1], [20.0 + T - 1, 50.0 + T - 1])  # requested order t, h
    assert w.timestamps[T - 1] == ts and np.isnan(w.timestamps[0])
    assert labelled_windows(tmp_path, ["t", "h"], device_id="d2").skipped == {"no_window": 1, "device": 1}
    assert labelled_windows(tmp_path, ["t", "pressure"]).skipped == {"no_window": 1, "channels": 2}


def test_feedback_section_turns_the_keeper_off(tmp_path: Path) -> None:
    registry = Registry(make_plugin_manager(load_entry_points=False))
    cfg = validate_config({"feedback": {"keep_windows": False}}, registry)
    assert cfg.feedback.keep_windows is False and validate_config({}, registry).feedback.after_rows == 32
    with pytest.raises(Exception, match="after_rows"):
        validate_config({"feedback": {"after_rows": -1}}, registry)

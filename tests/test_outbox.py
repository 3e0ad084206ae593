"""Outbox: durability across reopen, replay marking, back-off, order, disk budget, disk full."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.alerts.outbox import Outbox
from gateway.metrics import Metrics
from gateway.types import Alert, RadioMeta, Reading


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def alert(i: int, device: str = "d1", state: str = "raised") -> Alert:
    return Alert(device_id=device, kind="anomaly", state=state, severity="warning",  # type: ignore[arg-type]
                 timestamp=1000.0 + i, message=f"alert {i}", key=f"k{i}", score=1.5,
                 details={"i": i})


def reading(i: int) -> Reading:
    return Reading("d1", 2000.0 + i, {"t": float(i), "h": 50.0}, radio=RadioMeta(rssi=-100.0, snr=3.5), f_cnt=i)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_append_next_ack_per_handler(tmp_path: Path, metrics: Metrics) -> None:
    with Outbox(tmp_path / "o.db", ["a", "b"], 1 << 20, metrics) as ob:
        ids = [ob.append(alert(i)) for i in range(3)]
        assert ids == sorted(ids) and None not in ids
        got = ob.next_batch("a", 10)
        assert [e.alert.key for e in got if e.alert] == ["k0", "k1", "k2"]
        assert all(not e.replay and e.kind == "alert" for e in got)
        assert got[0].alert is not None and got[0].alert.as_dict() == alert(0).as_dict()
        ob.ack("a", [e.id for e in got[:2]])
        assert ob.pending("a") == 1 and ob.pending("b") == 3
        assert ob.stats()["alerts"] == 3  # b still needs them
        ob.ack("b", [e.id for e in ob.next_batch("b", 10)])
        ob.ack("a", [got[2].id])
        st = ob.stats()
        assert st["alerts"] == 0 and st["bytes"] == 0 and st["pending"] == {"a": 0, "b": 0}
        assert metrics.get("alerts_pending", handler="a") == 0


def test_durable_across_reopen_and_replay(tmp_path: Path, metrics: Metrics) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, ["a", "b"], 1 << 20, metrics)
    for i in range(4):
        ob.append(alert(i))
    ob.ack("a", [e.id for e in ob.next_batch("a", 2)])
    ob.close()
    with Outbox(path, ["a", "b"], 1 << 20, Metrics()) as ob2:
        assert ob2.pending("a") == 2 and ob2.pending("b") == 4
        got = ob2.next_batch("a", 10)
        assert [e.alert.key for e in got if e.alert] == ["k2", "k3"]
        assert all(e.replay and e.alert and e.alert.replay for e in got)
        ob2.ack("a", [e.id for e in got])
        # New alerts after the restart are live again.
        ob2.append(alert(9))
        assert [e.replay for e in ob2.next_batch("a", 10)] == [False]


def test_survives_killed_process(tmp_path: Path) -> None:
    """A process that appends then dies without closing leaves every committed alert behind."""
    path = tmp_path / "o.db"
    code = textwrap.dedent(f"""
        import os
        from gateway.alerts.outbox import Outbox
        from gateway.types import Alert
        ob = Outbox({str(path)!r}, ["a"], 1 << 20)
        for i in range(5):
            ob.append(Alert("d", "anomaly", "raised", "warning", float(i), "m", f"k{{i}}"))
        os._exit(0)  # no close, no WAL checkpoint
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with Outbox(path, ["a"], 1 << 20) as ob:
        got = ob.next_batch("a", 10)
        assert [e.alert.key for e in got if e.alert] == [f"k{i}" for i in range(5)]
        assert all(e.replay for e in got)


def test_nack_backoff_keeps_order_and_marks_replay(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.db", ["a", "b"], 1 << 20, base_backoff_s=2, max_backoff_s=5, clock=clock) as ob:
        for i in range(3):
            ob.append(alert(i))
        first = ob.next_batch("a", 10)
        assert ob.nack("a", first[0].id, "broker down") == 2
        assert ob.next_batch("a", 10) == []  # the head backs off and holds the rest back
        assert len(ob.next_batch("b", 10)) == 3  # other handlers unaffected
        ob.append(alert(3))  # queued while a is failing: replayed
        assert ob.next_due("a") == clock.t + 2
        clock.t += 2
        again = ob.next_batch("a", 10)
        assert [e.alert.key for e in again if e.alert] == ["k0", "k1", "k2", "k3"]
        assert all(e.replay for e in again)
        assert again[0].attempts == 1
        assert ob.nack("a", again[0].id, "x") == 4
        assert ob.nack("a", again[0].id, "x") == 5  # capped
        clock.t += 5
        ob.ack("a", [e.id for e in ob.next_batch("a", 10)])
        ob.append(alert(4))  # the handler recovered: live again
        assert [e.replay for e in ob.next_batch("a", 10)] == [False]
        assert [e.replay for e in ob.next_batch("b", 10)][-1] is False


def test_telemetry_lower_priority_roundtrip(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", ["a", "b"], 1 << 20) as ob:
        ob.append_telemetry(reading(1), ["a"])
        ob.append(alert(0))
        got = ob.next_batch("a", 10)
        assert [e.kind for e in got] == ["alert", "telemetry"]
        r = got[1].reading
        assert r is not None and r.values == {"t": 1.0, "h": 50.0} and r.radio.snr == 3.5 and r.f_cnt == 1
        assert ob.pending("b") == 1
        assert ob.append_telemetry(reading(2), ["unknown"]) is None


def test_budget_evicts_oldest_telemetry_then_refuses_alerts(tmp_path: Path, metrics: Metrics) -> None:
    with Outbox(tmp_path / "o.db", ["a"], 4000, metrics) as ob:
        tele = [ob.append_telemetry(reading(i)) for i in range(40)]
        assert None not in tele
        assert ob.stats()["bytes"] <= 4000
        assert metrics.get("outbox_dropped_total", reason="telemetry_evicted") > 0
        n = 0
        while ob.append(alert(n)) is not None:
            n += 1
            assert n < 100
        st = ob.stats()
        assert st["telemetry"] == 0 and st["alerts"] == n and st["bytes"] <= 4000
        assert metrics.get("outbox_dropped_total", reason="alert_refused_budget") == 1
        assert ob.append_telemetry(reading(99)) is None
        assert metrics.get("outbox_dropped_total", reason="telemetry_refused_budget") == 1
        # Stored alerts were never evicted; acknowledging frees room again.
        got = ob.next_batch("a", 100)
        assert [e.alert.key for e in got if e.alert] == [f"k{i}" for i in range(n)]
        ob.ack("a", [e.id for e in got])
        assert ob.append(alert(500)) is not None


def test_disk_full_is_counted_never_raised(tmp_path: Path, metrics: Metrics) -> None:
    """SQLite max_page_count makes the database 'full' like a full disk."""
    with Outbox(tmp_path / "o.db", ["a"], 1 << 30, metrics, hard_limit_bytes=64 * 1024) as ob:
        big = "x" * 3000
        for i in range(60):  # ~3 kB each: far more than the 64 kB file can hold
            r = reading(i)
            r.device_name = big
            assert ob.append_telemetry(r) is not None  # newer telemetry replaces older
        assert metrics.get("outbox_dropped_total", reason="telemetry_evicted") > 0
        assert 0 < ob.stats()["telemetry"] < 60
        # An alert evicts telemetry to get in, then once nothing is left to evict it is refused.
        refused = 0
        for i in range(200):
            a = alert(i)
            a.message = big
            if ob.append(a) is None:
                refused += 1
                break
        assert refused == 1
        assert metrics.get("outbox_dropped_total", reason="alert_refused_disk_full") == 1
        assert ob.stats()["telemetry"] == 0
        r = reading(0)
        r.device_name = big
        assert ob.append_telemetry(r) is None
        assert metrics.get("outbox_dropped_total", reason="telemetry_refused_disk_full") == 1
        # Still working: deliveries can be read and acknowledged, then alerts fit again.
        got = ob.next_batch("a", 1000)
        assert got and all(e.kind == "alert" for e in got)
        ob.ack("a", [e.id for e in got])
        assert ob.append(alert(1000)) is not None


def test_removed_handler_rows_purged(tmp_path: Path, metrics: Metrics) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, ["a", "gone"], 1 << 20) as ob:
        ob.append(alert(0))
        ob.ack("a", [e.id for e in ob.next_batch("a")])
    with Outbox(path, ["a"], 1 << 20, metrics) as ob:
        assert ob.stats()["alerts"] == 0
        assert metrics.get("outbox_dropped_total", reason="handler_removed") == 1


def test_corrupt_file_moved_aside(tmp_path: Path, metrics: Metrics) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a database" * 200)
    with Outbox(path, ["a"], 1 << 20, metrics) as ob:
        assert ob.append(alert(0)) is not None
    assert len(list(tmp_path.glob("o.db.corrupt-*"))) == 1
    assert metrics.get("outbox_errors_total", op="open_corrupt") == 1


def test_corrupt_row_dropped_and_counted(tmp_path: Path, metrics: Metrics) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, ["a"], 1 << 20, metrics) as ob:
        ob.append(alert(0))
        ob.append(alert(1))
        con = sqlite3.connect(path)
        try:
            con.execute("UPDATE entries SET payload = '{not json' WHERE id = (SELECT MIN(id) FROM entries)")
            con.commit()
        finally:
            con.close()
        got = ob.next_batch("a")
        assert [e.alert.key for e in got if e.alert] == ["k1"]
        assert metrics.get("outbox_dropped_total", reason="corrupt_entry") == 1
        assert ob.pending("a") == 1


def test_wal_and_full_sync(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", ["a"], 1 << 20) as ob:
        assert ob._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_listener_called_after_append(tmp_path: Path) -> None:
    calls: list[int] = []
    with Outbox(tmp_path / "o.db", ["a"], 1 << 20) as ob:
        ob.add_listener(lambda: calls.append(ob.pending("a")))
        ob.append(alert(0))
    assert calls == [1]


def test_use_after_close_is_counted_not_raised(tmp_path: Path, metrics: Metrics) -> None:
    ob = Outbox(tmp_path / "o.db", ["a"], 1 << 20, metrics)
    entry = ob.append(alert(0))
    assert entry is not None
    ob.close()
    ob.close()
    assert ob.append(alert(1)) is None
    ob.ack("a", [entry])
    ob.nack("a", entry, "late")
    assert metrics.get("outbox_errors_total") == 3
    with Outbox(tmp_path / "o.db", ["a"], 1 << 20) as again:  # nothing was lost
        assert [e.id for e in again.next_batch("a")] == [entry]


def test_reopen_of_a_full_database_still_delivers(tmp_path: Path, metrics: Metrics) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, ["a"], 1 << 30, hard_limit_bytes=64 * 1024) as ob:
        i = 0
        while ob.append(alert(i)) is not None:
            i += 1
    # Reopened with even less room than it already uses: opening and delivering still work.
    with Outbox(path, ["a"], 1 << 30, metrics, hard_limit_bytes=16 * 1024) as ob:
        got = ob.next_batch("a", 1000)
        assert len(got) == i and all(e.replay for e in got)
        assert ob.append(alert(999)) is None
        assert metrics.get("outbox_dropped_total", reason="alert_refused_disk_full") == 1
        ob.ack("a", [e.id for e in got])
        assert ob.pending("a") == 0

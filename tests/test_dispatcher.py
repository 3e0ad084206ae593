"""Dispatcher: isolation between handlers, retries, permanent failures, replay rate, drain."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.alerts.dispatcher import Dispatcher, TokenBucket
from gateway.alerts.outbox import Outbox
from gateway.contracts import DeliveryError, PermanentDeliveryError
from gateway.metrics import Metrics
from gateway.types import Alert, Reading


def alert(i: int) -> Alert:
    return Alert("d1", "anomaly", "raised", "warning", 1000.0 + i, f"m{i}", f"k{i}")


class Recorder:
    """A handler that records deliveries; ``behaviour(alert)`` may raise or block."""

    def __init__(self, name: str, behaviour: Callable[[Alert], None] | None = None) -> None:
        self.name = name
        self.behaviour = behaviour
        self.got: list[Alert] = []
        self.times: list[float] = []
        self.readings: list[Reading] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        return None

    def deliver(self, a: Alert) -> None:
        if self.behaviour is not None:
            self.behaviour(a)
        with self.lock:
            self.got.append(a)
            self.times.append(time.monotonic())

    def on_reading(self, reading: Reading) -> None:
        self.readings.append(reading)

    def stop(self) -> None:
        return None

    def keys(self) -> list[str]:
        with self.lock:
            return [a.key for a in self.got]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_token_bucket() -> None:
    t = [0.0]
    b = TokenBucket(rate=2.0, burst=2, clock=lambda: t[0])
    assert b.take() == 0 and b.take() == 0
    assert b.take() == pytest.approx(0.5)
    t[0] += 0.5
    assert b.take() == 0
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_failing_and_slow_handlers_do_not_block_a_good_one(tmp_path: Path) -> None:
    m = Metrics()
    release = threading.Event()

    def fail(_: Alert) -> None:
        raise DeliveryError("receiver down")

    good, bad, slow = Recorder("good"), Recorder("bad", fail), Recorder("slow", lambda _: release.wait(10))
    with Outbox(tmp_path / "o.db", ["good", "bad", "slow"], 1 << 20, m, base_backoff_s=0.05) as ob:
        d = Dispatcher(ob, [good, bad, slow], m)
        d.start()
        try:
            for i in range(5):
                ob.append(alert(i))
            wait_for(lambda: len(good.got) == 5)
            assert good.keys() == [f"k{i}" for i in range(5)]
            wait_for(lambda: m.get("delivery_failures_total", handler="bad", reason="error") >= 2)
            assert ob.pending("bad") == 5 and ob.pending("good") == 0
            assert m.get("alerts_delivered_total", handler="good") == 5
            assert m.get("alerts_pending", handler="bad") == 5
            t0 = time.monotonic()
            d.stop(0.3)  # slow is stuck in deliver: stop still returns in bounded time
            assert time.monotonic() - t0 < 2.0
        finally:
            release.set()
            for t in threading.enumerate():
                if t.name.startswith("deliver-"):
                    t.join(5)
        assert ob.pending("slow") >= 4  # what it did not deliver stays in the outbox


def test_retry_with_backoff_then_delivered_once_in_order(tmp_path: Path) -> None:
    m = Metrics()
    failures = [0]

    def flaky(a: Alert) -> None:
        if failures[0] < 3:
            failures[0] += 1
            raise DeliveryError(f"attempt {failures[0]} failed")

    h = Recorder("h", flaky)
    with Outbox(tmp_path / "o.db", ["h"], 1 << 20, m, base_backoff_s=0.02) as ob:
        d = Dispatcher(ob, [h], m)
        d.start()
        try:
            for i in range(3):
                ob.append(alert(i))
            wait_for(lambda: len(h.got) == 3)
        finally:
            d.stop(1)
        assert h.keys() == ["k0", "k1", "k2"]
        assert all(a.replay for a in h.got)  # all were held back by the failure
        assert m.get("delivery_failures_total", handler="h", reason="error") == 3
        assert m.get("alerts_replayed_total", handler="h") == 3
        assert ob.pending("h") == 0


def test_permanent_failure_dropped_and_counted(tmp_path: Path) -> None:
    m = Metrics()

    def reject_first(a: Alert) -> None:
        if a.key == "k0":
            raise PermanentDeliveryError("HTTP 400")

    h = Recorder("h", reject_first)
    with Outbox(tmp_path / "o.db", ["h"], 1 << 20, m) as ob:
        d = Dispatcher(ob, [h], m)
        d.start()
        try:
            ob.append(alert(0))
            ob.append(alert(1))
            wait_for(lambda: len(h.got) == 1)
        finally:
            d.stop(1)
        assert h.keys() == ["k1"] and not h.got[0].replay
        assert m.get("delivery_failures_total", handler="h", reason="permanent") == 1
        assert m.get("outbox_dropped_total", reason="permanent_failure") == 1
        assert ob.pending("h") == 0


def test_handler_bug_is_retried_not_fatal(tmp_path: Path) -> None:
    m = Metrics()
    calls = [0]

    def buggy(a: Alert) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyError("bug")

    h = Recorder("h", buggy)
    with Outbox(tmp_path / "o.db", ["h"], 1 << 20, m, base_backoff_s=0.02) as ob:
        d = Dispatcher(ob, [h], m)
        d.start()
        try:
            ob.append(alert(0))
            wait_for(lambda: len(h.got) == 1)
        finally:
            d.stop(1)
        assert m.get("delivery_failures_total", handler="h", reason="exception") == 1


def test_replay_after_restart_is_rate_limited(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, ["h"], 1 << 20) as ob:
        for i in range(10):
            ob.append(alert(i))
    m = Metrics()
    h = Recorder("h")
    with Outbox(path, ["h"], 1 << 20, m) as ob:
        d = Dispatcher(ob, [h], m, replay_rate_per_s=20, replay_burst=1)
        d.start()
        try:
            wait_for(lambda: len(h.got) == 10)
            ob.append(alert(10))  # live: not replayed, not rate limited
            wait_for(lambda: len(h.got) == 11)
        finally:
            d.stop(1)
    assert h.keys() == [f"k{i}" for i in range(11)]
    assert [a.replay for a in h.got] == [True] * 10 + [False]
    assert h.times[9] - h.times[0] >= 9 / 20 * 0.9  # 20 per second after the first token
    assert m.get("alerts_replayed_total", handler="h") == 10


def test_stop_drains_due_entries(tmp_path: Path) -> None:
    h = Recorder("h")
    with Outbox(tmp_path / "o.db", ["h"], 1 << 20) as ob:
        d = Dispatcher(ob, [h], idle_poll_s=0.05)
        for i in range(20):
            ob.append(alert(i))
        d.start()
        d.stop(5)
        assert len(h.got) == 20 and ob.pending("h") == 0


def test_telemetry_entries_go_to_on_reading(tmp_path: Path) -> None:
    h = Recorder("h")
    with Outbox(tmp_path / "o.db", ["h"], 1 << 20) as ob:
        d = Dispatcher(ob, [h])
        d.start()
        try:
            ob.append_telemetry(Reading("d1", 1.0, {"t": 2.0}))
            wait_for(lambda: len(h.readings) == 1)
        finally:
            d.stop(1)
        assert h.readings[0].values == {"t": 2.0}


def test_unknown_handler_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", ["a"], 1 << 20) as ob:
        with pytest.raises(ValueError, match="not known"):
            Dispatcher(ob, [Recorder("b")])

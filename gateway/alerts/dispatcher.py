"""Delivers what the outbox holds: one worker thread per alert handler.

Each worker pulls its handler's due entries from the outbox (oldest first), calls
``handler.deliver(alert)`` and acknowledges, or ``nack``s on ``DeliveryError`` so the
outbox backs off and retries (at-least-once). A ``PermanentDeliveryError`` drops that one
delivery (counted, logged). Workers share nothing but the outbox, so a slow or failing
handler never holds the others back.

After an outage the backlog is replayed through a token bucket per handler
(``replay_rate_per_s``, burst ``replay_burst``) so a recovering receiver is not flooded.

Handlers are started and stopped by their owner (the service), not here. ``stop(timeout)``
lets workers deliver what is due for at most ``timeout`` seconds, then returns; a worker
stuck inside a handler is abandoned (daemon thread) and its entries stay in the outbox.

Metrics: ``alerts_delivered_total{handler}``, ``alerts_replayed_total{handler}``,
``telemetry_delivered_total{handler}``, ``delivery_failures_total{handler,reason}``
(reason: error, exception, permanent); ``alerts_pending{handler}`` is kept by the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from gateway.alerts.outbox import Outbox
from gateway.alerts.outbox_db import OutboxEntry
from gateway.contracts import AlertHandler, DeliveryError, DurableTelemetry, PermanentDeliveryError
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. Not thread-safe (one per worker)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.stamp = clock()

    def take(self) -> float:
        """Take one token and return 0.0, or return the seconds until one is available."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Dispatcher:
    """One delivery worker per handler; see the module docstring."""

    def __init__(self, outbox: Outbox, handlers: Sequence[AlertHandler], metrics: Metrics | None = None,
                 *, replay_rate_per_s: float = 50.0, replay_burst: float | None = None,
                 batch_size: int = 50, idle_poll_s: float = 5.0) -> None:
        self.outbox = outbox
        self.handlers = list(handlers)
        self.metrics = metrics or outbox.metrics
        self.replay_rate_per_s = replay_rate_per_s
        self.replay_burst = replay_burst if replay_burst is not None else max(1.0, replay_rate_per_s)
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self._wakes = {h.name: threading.Event() for h in self.handlers}
        self._threads: list[threading.Thread] = []
        self._abort = threading.Event()  # stop now, even with due entries
        self._draining = False
        self._deadline = float("inf")
        self._failures: dict[str, int] = {h.name: 0 for h in self.handlers}
        unknown = [h.name for h in self.handlers if h.name not in outbox.handlers]
        if unknown:
            raise ValueError(f"handlers not known to the outbox: {', '.join(unknown)}")
        outbox.add_listener(self.wake)
        for name, text in (("alerts_delivered_total", "Alerts delivered, by handler"),
                           ("alerts_replayed_total", "Alerts delivered late (after a failure or restart)"),
                           ("delivery_failures_total", "Failed deliveries, by handler and reason")):
            self.metrics.describe(name, text)

    def start(self) -> None:
        """Start one worker thread per handler. Returns at once; a second call does nothing."""
        if self._threads:
            return
        for handler in self.handlers:
            t = threading.Thread(target=self._run, args=(handler,), name=f"deliver-{handler.name}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        """Tell every worker new entries may be due (called by the outbox after each append)."""
        for event in self._wakes.values():
            event.set()

    def retry_now(self, handler: str) -> None:
        """The receiver of ``handler`` is reachable again: end its back-off and wake its worker.

        Handlers call this (through the service) when their connection comes back, so a
        backlog is not held until the longest back-off of the outage has run out.
        """
        if handler not in self._wakes:
            return
        n = self.outbox.retry_now(handler)
        if n:
            log.info("handler %s reachable again: retrying %d pending deliveries now", handler, n)
        self._wakes[handler].set()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is due for at most ``timeout`` seconds, then stop the workers.

        Returns within about ``timeout`` seconds; entries not delivered stay in the outbox.
        """
        self._deadline = time.monotonic() + timeout
        self._draining = True
        self.wake()
        for t in self._threads:
            t.join(max(0.0, self._deadline - time.monotonic()))
        self._abort.set()
        self.wake()
        for t in self._threads:
            t.join(0.5)
            if t.is_alive():
                log.warning("%s still inside its handler after the drain timeout; abandoned "
                            "(its entries stay in the outbox)", t.name)
        self._threads = [t for t in self._threads if t.is_alive()]

    # ------------------------------------------------------------------ worker

    def _done(self) -> bool:
        return self._abort.is_set() or (self._draining and time.monotonic() >= self._deadline)

    def _run(self, handler: AlertHandler) -> None:
        name = handler.name
        wake = self._wakes[name]
        bucket = TokenBucket(self.replay_rate_per_s, self.replay_burst)
        while not self._done():
            wake.clear()
            try:
                batch = self.outbox.next_batch(name, self.batch_size)
                due = None if batch else self.outbox.next_due(name)
            except Exception as exc:  # noqa: BLE001 - e.g. a database error; logged, retried
                log.error("delivery worker %s cannot read the outbox: %s", name, exc)
                batch, due = [], None
            if batch:
                self._deliver_batch(handler, batch, bucket)
                continue
            if self._draining:
                return  # nothing due (empty, or backing off): the drain is over for this handler
            wait = self.idle_poll_s if due is None else min(self.idle_poll_s, max(0.01, due - self.outbox.clock()))
            wake.wait(wait)

    def _deliver_batch(self, handler: AlertHandler, batch: list[OutboxEntry], bucket: TokenBucket) -> None:
        name = handler.name
        acked: list[int] = []
        try:
            for entry in batch:
                if self._done():
                    return
                if entry.replay and not self._await_token(bucket):
                    return
                try:
                    self._deliver_one(handler, entry)
                except PermanentDeliveryError as exc:
                    self.metrics.inc("delivery_failures_total", handler=name, reason="permanent")
                    self.outbox.drop(name, entry.id, "permanent_failure")
                    log.error("handler %s refused entry %d for good: %s", name, entry.id, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - any handler failure is retried later
                    reason = "error" if isinstance(exc, DeliveryError) else "exception"
                    self._failed(name, entry, exc, reason)
                    return
                acked.append(entry.id)
                self._delivered(name, entry)
        finally:
            self.outbox.ack(name, acked)

    def _deliver_one(self, handler: AlertHandler, entry: OutboxEntry) -> None:
        if entry.alert is not None:
            handler.deliver(entry.alert)
            return
        assert entry.reading is not None
        if isinstance(handler, DurableTelemetry):
            handler.deliver_reading(entry.reading)  # may raise DeliveryError: kept and retried
        else:
            handler.on_reading(entry.reading)  # best-effort by contract

    def _await_token(self, bucket: TokenBucket) -> bool:
        """Wait for a replay token; False when the dispatcher is stopping meanwhile."""
        while (wait := bucket.take()) > 0:
            if self._abort.wait(wait) or self._done():
                return False
        return True

    def _delivered(self, name: str, entry: OutboxEntry) -> None:
        if entry.kind == "alert":
            self.metrics.inc("alerts_delivered_total", handler=name)
            if entry.replay:
                self.metrics.inc("alerts_replayed_total", handler=name)
        else:
            self.metrics.inc("telemetry_delivered_total", handler=name)
        if self._failures[name]:
            log.info("handler %s delivering again after %d failed attempts", name, self._failures[name])
            self._failures[name] = 0

    def _failed(self, name: str, entry: OutboxEntry, exc: Exception, reason: str) -> None:
        self.metrics.inc("delivery_failures_total", handler=name, reason=reason)
        backoff = self.outbox.nack(name, entry.id, f"{type(exc).__name__}: {exc}")
        self._failures[name] += 1
        n = self._failures[name]
        if reason == "exception":
            log.error("handler %s crashed delivering entry %d (retry in %.0f s)", name, entry.id,
                      backoff, exc_info=exc)
        elif n == 1 or n % 20 == 0:  # first failure, then every 20th: the counters carry the rest
            log.warning("handler %s failed to deliver (attempt %d, retry in %.0f s): %s",
                        name, n, backoff, exc)

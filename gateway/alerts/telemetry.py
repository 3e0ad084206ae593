"""Fan-out of readings to handlers: best-effort ``on_reading``, or durably via the outbox.

Runs on its own thread behind a bounded queue so a slow dashboard never slows the
pipeline; when the queue is full the oldest reading is dropped and counted
(``telemetry_dropped_total{reason=queue_full}``).

Two paths per handler:

- best-effort (the default): ``handler.on_reading(reading)``, called from this thread;
  a handler that cannot send (broker down) counts its own drop.
- durable, for handlers whose ``durable_telemetry`` attribute is true (the ``mqtt`` handler
  with ``telemetry_durable = true``): each batch the thread takes from the queue is written
  to the outbox in one transaction (one fsync per batch, not per reading) and delivered by
  the dispatcher through ``handler.deliver_reading``, so readings taken while the broker is
  down are published after it returns. Within the outbox budget the oldest telemetry is
  evicted first and alerts are never displaced (``outbox_dropped_total{reason}``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Sequence

from gateway.contracts import AlertHandler, DurableTelemetry
from gateway.metrics import Metrics
from gateway.alerts.outbox import Outbox
from gateway.ingest.profiles import ProfileConfig
from gateway.types import RawUplink, Reading

log = logging.getLogger(__name__)


class TelemetryFanout:
    def __init__(self, handlers: Sequence[AlertHandler], metrics: Metrics, max_queue: int = 10000,
                 outbox: Outbox | None = None) -> None:
        durable = [h for h in handlers
                   if outbox is not None and isinstance(h, DurableTelemetry) and h.durable_telemetry]
        self.durable_names: tuple[str, ...] = tuple(h.name for h in durable)
        self.handlers = [h for h in handlers if hasattr(h, "on_reading") and h not in durable]
        self.outbox = outbox if durable else None
        self.metrics = metrics
        self._queue: deque[Reading] = deque(maxlen=max_queue)
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._put = 0  # readings queued so far ...
        self._done = 0  # ... and taken through the outbox and handlers (see flush)

    def start(self) -> None:
        if self.handlers or self.outbox is not None:
            self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
            self._thread.start()

    def observe_reading(self, reading: Reading, profile: ProfileConfig, uplink: RawUplink) -> None:
        """``ReadingObserver``: queue ``reading`` for the handlers (never blocks)."""
        self.put(reading)

    def put(self, reading: Reading) -> None:
        if not self.handlers and self.outbox is None:
            return
        with self._cond:
            queue = self._queue
            if len(queue) == queue.maxlen:
                self.metrics.inc("telemetry_dropped_total", reason="queue_full")
                self._done += 1  # the one pushed out counts as taken
            queue.append(reading)
            self._put += 1
            # the thread only waits on an empty queue: wake it for the first reading only,
            # not once per reading (a thread switch per reading under load)
            if len(queue) == 1:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop and not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            if self.outbox is not None:
                # refusals are counted by the outbox (outbox_dropped_total{reason=telemetry_refused_*})
                self.outbox.append_telemetry_many(batch, self.durable_names)
            for reading in batch:
                for handler in self.handlers:
                    try:
                        handler.on_reading(reading)
                    except Exception as exc:  # noqa: BLE001 - counted and logged, one handler never stops the others
                        self.metrics.inc("telemetry_dropped_total", reason="handler_error")
                        log.warning("telemetry to %s failed: %s", getattr(handler, "name", handler), exc)
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every reading queued so far has been taken (durable ones written to
        the outbox); True when done within ``timeout``. The checkpoint calls it first: its
        position may pass a reading only once that reading's telemetry is on disk."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._put
            while self._done < target and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._done >= target or self._thread is None
    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

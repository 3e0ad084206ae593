"""The processing loop: uplink -> decode -> reading -> window -> batch -> model -> alerts.

One pipeline thread owns the windows and the batcher, so they need no lock; the bounded
ingest queue is what sources feed from their own threads, and the alert policy takes its
own lock because a model switch replaces its config from another thread. Alerts go to the durable outbox before any handler sees them. The loop also runs
the periodic jobs (silent-device check, gauges) and pings the watchdog callback, so a stuck
loop stops the pings (systemd then restarts the service).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.alerts.policy import AlertPolicy
from gateway.contracts import ReadingObserver
from gateway.ingest.decoding import UplinkDecoder
from gateway.ingest.profiles import ProfileConfig
from gateway.metrics import Metrics
from gateway.pipeline.batching import Batcher
from gateway.pipeline.inference import DueWindow, InferenceEngine
from gateway.pipeline.windows import WindowStore
from gateway.types import Alert, RawUplink, Reading

log = logging.getLogger(__name__)

_STOP = object()
DRAIN_MAX = 4096  # most queued uplinks handled between two periodic checks


@dataclass(frozen=True)
class PipelineSettings:
    """Batching and back-pressure of the pipeline (``[batcher]`` and ``[gateway]`` config;
    the service resolves ``"auto"`` batching to numbers first, see ``batching.resolve_batching``)."""

    max_batch: int = 64
    max_delay_s: float = 0.02
    queue_size: int = 10000
    block_s: float = 5.0


class Pipeline:
    """Owns the ingest queue and the pipeline thread.

    ``ingest(uplink)`` is thread-safe and is what sources call. When the queue is full it
    waits up to ``settings.block_s`` (back-pressure into the source: MQTT then leaves the
    message on the broker) and otherwise drops and counts the uplink (reason ``queue_full``).

    Per accepted reading the loop feeds the alert policy's rules, then every
    ``ReadingObserver`` in ``observers`` (telemetry, recorder, probes) in order, then the
    reading's window; due windows are scored in batches. Jobs added with ``add_periodic``
    run on the pipeline thread about once a second (the systemd watchdog ping).
    """

    def __init__(
        self,
        *,
        decoder: UplinkDecoder,
        engine: InferenceEngine,
        windows: WindowStore,
        policy: AlertPolicy,
        publish_alerts: Callable[[list[Alert]], None],
        metrics: Metrics,
        observers: Sequence[ReadingObserver] = (),
        settings: PipelineSettings = PipelineSettings(),
    ) -> None:
        self.decoder = decoder
        self.engine = engine
        self.windows = windows
        self.policy = policy
        self.publish_alerts = publish_alerts
        self.metrics = metrics
        self.observers = tuple(observers)
        self.max_batch = settings.max_batch
        self.max_delay_s = settings.max_delay_s
        self._batcher: Batcher[DueWindow] = Batcher(settings.max_batch, settings.max_delay_s)
        self.block_s = settings.block_s
        self._periodic_jobs: list[Callable[[], None]] = []
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=settings.queue_size)
        self._thread: threading.Thread | None = None
        self._running = False
        self._clock_offset = 0.0
        self._last_periodic = 0.0
        self.idle = threading.Event()

    def add_periodic(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the pipeline thread about once a second (add before ``start``)."""
        self._periodic_jobs.append(job)

    # ---- called from source threads -------------------------------------------------
    def ingest(self, uplink: RawUplink) -> None:
        try:
            self._queue.put(uplink, timeout=self.block_s)
        except queue.Full:
            self.metrics.inc("uplinks_dropped_total", reason="queue_full")
            log.warning("ingest queue full for %.1f s: dropped an uplink from %s", self.block_s, uplink.device_id)

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Process what is queued, flush the pending batch, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def now(self) -> float:
        """Wall clock, advanced to the newest reading when sources run ahead (simulations)."""
        return time.time() + self._clock_offset

    # ---- the loop -------------------------------------------------------------------
    def _run(self) -> None:
        get = self._queue.get
        batcher = self._batcher
        while True:
            timeout = batcher.wait_s(0.5)
            try:
                item = get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush()
                return
            if item is not None:
                self.idle.clear()
                self._handle(item)
                # take what else is already waiting before deciding; the deadline still holds
                for _ in range(min(self.max_batch * 4, DRAIN_MAX)):
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        self._flush()
                        return
                    self._handle(nxt)
                    overdue = batcher.due()
                    if overdue:
                        self._score(overdue)
            if item is None:
                self._flush()  # the wait ended with nothing new: the deadline (or idleness) is reached
            else:
                overdue = batcher.due()
                if overdue:
                    self._score(overdue)
            self._periodic()
            if item is None and not batcher and self._queue.empty():
                self.idle.set()

    def _handle(self, uplink: RawUplink) -> None:
        decoded = self.decoder.decode(uplink)
        if decoded is None:
            return
        reading, profile = decoded
        self.metrics.inc("readings_total")
        ahead = reading.timestamp - time.time()
        if ahead > self._clock_offset:
            self._clock_offset = ahead
        alerts = self.policy.on_reading(reading, _battery(reading, profile))
        if alerts:
            self.publish_alerts(alerts)
        for observer in self.observers:
            observer.observe_reading(reading, profile, uplink)
        channels = list(profile.channels) if profile.channels else None
        window = self.windows.add(reading, channels, profile.adapter, exclude=profile.battery_field)
        if window.count == 1 and profile.expected_interval_s:  # a new (or re-admitted) device
            self.policy.set_expected_interval(reading.device_id, profile.expected_interval_s)
        due = self.engine.observe(window)
        if due is not None:
            full = self._batcher.add(due)
            if full:
                self._score(full)

    def _flush(self) -> None:
        """Score whatever is pending now."""
        windows = self._batcher.take()
        if windows:
            self._score(windows)

    def _score(self, windows: list[DueWindow]) -> None:
        try:
            results = self.engine.score(windows)
        except Exception as exc:  # noqa: BLE001 - inference failure is counted; the loop goes on
            self.metrics.inc("inference_failures_total", reason=type(exc).__name__)
            self.metrics.inc("windows_unscored_total", len(windows), reason="inference_failed")
            log.error("inference failed for a batch of %d windows: %s", len(windows), exc)
            return
        alerts: list[Alert] = []
        for due, score, details in results:
            alerts.extend(self.policy.on_score(due.window.device_id, due.timestamp, score, details))
        if alerts:
            self.publish_alerts(alerts)

    def _periodic(self) -> None:
        now_mono = time.monotonic()
        if now_mono - self._last_periodic < 1.0:
            return
        self._last_periodic = now_mono
        alerts = self.policy.check_silent(self.now())
        if alerts:
            self.publish_alerts(alerts)
        self.metrics.set("ingest_queue_depth", self._queue.qsize())
        self.metrics.set("devices_tracked", len(self.windows))
        for job in self._periodic_jobs:
            job()


def _battery(reading: Reading, profile: ProfileConfig) -> float | None:
    """The profile's battery field; decoders keep battery fields out of ``values`` otherwise."""
    field = profile.battery_field
    return reading.values.get(field) if field else None

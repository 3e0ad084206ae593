"""The processing loop: uplink -> decode -> reading -> window -> batch -> model -> alerts.

One pipeline thread owns every mutable structure (windows, alert policy, batcher), so
nothing here needs a lock except the bounded ingest queue that sources feed from their own
threads. Alerts go to the durable outbox before any handler sees them. The loop also runs
the periodic jobs (silent-device check, gauges) and pings the watchdog callback, so a stuck
loop stops the pings (systemd then restarts the service).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from gateway.alert_policy import AlertPolicy
from gateway.decoding import decode_uplink
from gateway.inference import DueWindow, InferenceEngine
from gateway.metrics import Metrics
from gateway.quarantine import Quarantine
from gateway.recorder import ReadingRecorder
from gateway.telemetry import TelemetryFanout
from gateway.types import Alert, DecodeError, RawUplink, Reading
from gateway.windows import WindowStore

log = logging.getLogger(__name__)

_STOP = object()


class Pipeline:
    """Owns the ingest queue and the pipeline thread.

    ``ingest(uplink)`` is thread-safe and is what sources call. When the queue is full it
    waits up to ``block_s`` (back-pressure into the source: MQTT then leaves the message
    on the broker) and otherwise drops and counts the uplink (reason ``queue_full``).
    """

    def __init__(
        self,
        *,
        plugin_manager: Any,
        profiles: Any,
        engine: InferenceEngine,
        policy: AlertPolicy,
        publish_alerts: Callable[[list[Alert]], None],
        metrics: Metrics,
        quarantine: Quarantine,
        telemetry: TelemetryFanout | None = None,
        window_store: WindowStore,
        max_batch: int = 64,
        max_delay_s: float = 0.02,
        queue_size: int = 10000,
        block_s: float = 5.0,
        on_reading: Callable[[Reading], None] | None = None,
        recorder: ReadingRecorder | None = None,
        watchdog: Callable[[], None] | None = None,
    ) -> None:
        self.pm = plugin_manager
        self.profiles = profiles
        self.engine = engine
        self.policy = policy
        self.publish_alerts = publish_alerts
        self.metrics = metrics
        self.quarantine = quarantine
        self.telemetry = telemetry
        self.windows = window_store
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.block_s = block_s
        self.on_reading = on_reading
        self.recorder = recorder
        self.watchdog = watchdog
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._due: list[DueWindow] = []
        self._due_since: float | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._clock_offset = 0.0
        self._last_periodic = 0.0
        self.idle = threading.Event()

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
        while True:
            timeout = 0.5
            if self._due_since is not None:
                timeout = max(0.0, self._due_since + self.max_delay_s - time.monotonic())
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
                # take what else is already waiting, up to a batch's worth, before deciding
                for _ in range(self.max_batch * 4):
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        self._flush()
                        return
                    self._handle(nxt)
            if self._due and (len(self._due) >= self.max_batch or item is None
                              or (self._due_since is not None and time.monotonic() - self._due_since >= self.max_delay_s)):
                self._flush()
            self._periodic()
            if item is None and not self._due and self._queue.empty():
                self.idle.set()

    def _handle(self, uplink: RawUplink) -> None:
        m = self.metrics
        try:
            reading, profile = decode_uplink(self.pm, uplink, self.profiles)
        except DecodeError as exc:
            reason = getattr(exc, "reason", None) or "decode_error"
            self.quarantine.put(uplink, reason, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the gateway; counted and kept
            self.quarantine.put(uplink, "decoder_crashed", f"{type(exc).__name__}: {exc}")
            log.exception("decoder raised on an uplink from %s", uplink.device_id)
            return
        m.inc("readings_total")
        ahead = reading.timestamp - time.time()
        if ahead > self._clock_offset:
            self._clock_offset = ahead
        alerts = self.policy.on_reading(reading, _battery(reading, profile))
        if alerts:
            self.publish_alerts(alerts)
        if self.on_reading is not None:
            self.on_reading(reading)
        if self.telemetry is not None:
            self.telemetry.put(reading)
        if self.recorder is not None:
            self.recorder.put(reading, profile, uplink.f_port)
        channels = list(profile.channels) if profile is not None and profile.channels else None
        adapter = profile.adapter if profile is not None else None
        window = self.windows.add(reading, channels, adapter, exclude=getattr(profile, "battery_field", None))
        if window.count == 1 and getattr(profile, "expected_interval_s", None):  # a new (or re-admitted) device
            self.policy.set_expected_interval(reading.device_id, profile.expected_interval_s)
        due = self.engine.observe(window)
        if due is not None:
            if not self._due:
                self._due_since = time.monotonic()
            self._due.append(due)
            if len(self._due) >= self.max_batch:
                self._flush()

    def _flush(self) -> None:
        if not self._due:
            self._due_since = None
            return
        windows = self._due
        self._due = []
        self._due_since = None
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
        if self.watchdog is not None:
            self.watchdog()


def _battery(reading: Reading, profile: Any) -> float | None:
    """The profile's battery field; decoders keep battery fields out of ``values`` otherwise."""
    field = getattr(profile, "battery_field", None)
    return reading.values.get(field) if field else None

"""The processing loop: uplink -> decode -> reading -> window -> batch -> model -> alerts.

One pipeline thread owns the windows and the batcher, so they need no lock; the bounded
ingest queue is what sources feed from their own threads, and the alert policy takes its
own lock because a model switch replaces its config from another thread. Alerts go to the
durable outbox before any handler sees them. The loop also runs the periodic jobs (silent-device check, gauges) and pings the watchdog callback, so a stuck
loop stops the pings (systemd then restarts the service).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.alerts.policy import AlertPolicy
from gateway.alerts.policy_batch import on_scores
from gateway.contracts import ReadingObserver, ScoreObserver
from gateway.ingest.decoding import UplinkDecoder
from gateway.ingest.profiles import ProfileConfig
from gateway.metrics import Metrics
from gateway.pipeline.batching import Batcher
from gateway.pipeline.inference import DueWindow, InferenceEngine
from gateway.pipeline.windows import WindowStore
from gateway.types import Alert, RawUplink, Reading

if TYPE_CHECKING:
    from gateway.state.checkpoint import Checkpointer

log = logging.getLogger(__name__)

_STOP = object()
DRAIN_MAX = 4096  # most queued uplinks handled between two periodic checks
# publish-to-decision: from the source's hand-off (``ingest``) to the alert decision
DECISION_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Call:
    """A job queued behind the uplinks (``Pipeline.call_soon``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn


@dataclass(frozen=True)
class PipelineSettings:
    """Batching and back-pressure of the pipeline (``[batcher]`` and ``[gateway]`` config;
    the service resolves ``"auto"`` batching to numbers first, see ``batching.resolve_batching``)."""

    max_batch: int = 64
    max_delay_s: float = 0.02
    queue_size: int = 10000
    block_s: float = 5.0
    # step each reading's level once per batch (columns.apply_follows, one median over the
    # batch) instead of one median per reading. Each due window carries the level its own
    # reading's step left (DueWindow.level), so the result is the per-reading path's
    # (tests/test_columnar_equal.py). It was off while windows were standardised with the
    # device's level at batch time, which made a score depend on which later readings shared
    # its batch (the cluster test's timing-dependent failure, bench/RESULTS.md 19-20).
    defer_level_steps: bool = True


class Pipeline:
    """Owns the ingest queue and the pipeline thread.

    ``ingest(uplink)`` is thread-safe and is what sources call. When the queue is full it
    waits up to ``settings.block_s`` (back-pressure into the source: MQTT then leaves the
    message on the broker) and otherwise drops and counts the uplink (reason ``queue_full``).

    Per accepted reading the loop feeds the alert policy's rules, then every
    ``ReadingObserver`` in ``observers`` (telemetry, recorder, probes) in order, then the
    reading's window; due windows are scored in batches, and every score goes to the alert
    policy and then to each ``ScoreObserver`` (the status page). An observer may be both;
    ``observers`` holds them all. Jobs added with ``add_periodic`` run on the pipeline
    thread about once a second (the systemd watchdog ping, checkpoints).
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
        observers: Sequence[ReadingObserver | ScoreObserver] = (),
        settings: PipelineSettings = PipelineSettings(),
    ) -> None:
        self.decoder = decoder
        self.engine = engine
        self.windows = windows
        self.policy = policy
        self.publish_alerts = publish_alerts
        self.metrics = metrics
        self.observers = tuple(o for o in observers if isinstance(o, ReadingObserver))
        self.score_observers = tuple(o for o in observers if isinstance(o, ScoreObserver))
        metrics.histogram("decision_latency_seconds", DECISION_LATENCY_BUCKETS,
                          "Seconds from a source handing an uplink to the pipeline to the alert decision "
                          "on the window it completed (queueing, batching and inference included)")
        self.max_batch = settings.max_batch
        self.defer_level_steps = settings.defer_level_steps
        self.max_delay_s = settings.max_delay_s
        self.block_s = settings.block_s
        self._periodic_jobs: list[Callable[[], None]] = []
        # the queue holds uplinks, chunks of them and jobs; its bound is in uplinks (``_queued``,
        # under ``_room``), so a chunk takes the room of its uplinks
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue_size = settings.queue_size
        self._queued = 0
        self._room = threading.Condition(threading.Lock())
        self._batcher: Batcher[DueWindow] = Batcher(settings.max_batch, settings.max_delay_s)
        self._thread: threading.Thread | None = None
        self._running = False
        self._clock_offset = 0.0
        self._last_periodic = 0.0
        self._stream_ts: float | None = None  # newest reading timestamp handled ...
        self._stream_mono = 0.0  # ... and when (monotonic)
        self.handled_seq = 0  # ingest-log position of the last uplink handled (gateway.ingest.log)
        self.checkpointer: Checkpointer | None = None  # set before start; see checkpoint()
        self.idle = threading.Event()

    def add_periodic(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the pipeline thread about once a second (add before ``start``)."""
        self._periodic_jobs.append(job)

    # ---- called from source threads -------------------------------------------------
    def ingest(self, uplink: RawUplink) -> None:
        if not self._enqueue(uplink, 1, self.block_s):
            self.metrics.inc("uplinks_dropped_total", reason="queue_full")
            log.warning("ingest queue full for %.1f s: dropped an uplink from %s", self.block_s, uplink.device_id)

    def ingest_logged(self, uplink: RawUplink) -> None:
        """An uplink already in the ingest log (``gateway.ingest.accept``): waits for room as
        long as it takes (never dropped: it was acknowledged; the source's thread is held,
        so the broker keeps what follows)."""
        self._enqueue(uplink, 1, None)

    def ingest_chunk(self, uplinks: list[RawUplink]) -> None:
        """A chunk of uplinks (a received chunk, in order), handled as one unit of work: one
        queue entry, decoded and windowed in one pass, their due windows scored together.
        Waits for room like ``ingest`` (``block_s``), then drops and counts the whole chunk."""
        if uplinks and not self._enqueue(uplinks, len(uplinks), self.block_s):
            self.metrics.inc("uplinks_dropped_total", len(uplinks), reason="queue_full")
            log.warning("ingest queue full for %.1f s: dropped a chunk of %d uplinks", self.block_s, len(uplinks))

    def ingest_logged_chunk(self, uplinks: list[RawUplink]) -> None:
        """``ingest_chunk`` for logged uplinks: waits for room as long as it takes."""
        if uplinks:
            self._enqueue(uplinks, len(uplinks), None)

    def _enqueue(self, item: Any, n: int, timeout: float | None) -> bool:
        """Put ``item`` (worth ``n`` uplinks) once the queue has room for it (a chunk larger
        than the whole queue waits for an empty one); False after ``timeout`` seconds."""
        with self._room:
            if self._queued and self._queued + n > self._queue_size:
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._queued and self._queued + n > self._queue_size:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._room.wait(left)
            self._queued += n
        self._queue.put((item, time.monotonic(), n))
        return True

    def _taken(self, n: int) -> None:
        with self._room:
            self._queued -= n
            self._room.notify_all()

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Process what is queued, flush the pending batch, then stop the thread. True when
        the thread finished (everything handled: a final checkpoint may be taken)."""
        if self._thread is None:
            return True
        self._queue.put((_STOP, None, 0))
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        self._thread = None
        return done

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the pipeline thread once every uplink queued before it has been
        handled and its due windows scored (the pending batch is flushed first), so ``fn``
        sees device state that reflects exactly those uplinks. Never dropped: blocks while
        the queue is full. An exception from ``fn`` is logged and counted
        (``pipeline_calls_failed_total``); the loop goes on."""
        self._enqueue(_Call(fn), 1, None)

    def queue_depth(self) -> int:
        """Uplinks (and jobs) waiting."""
        return self._queued

    def now(self) -> float:
        """Wall clock, advanced to the newest reading when sources run ahead (simulations)."""
        return time.time() + self._clock_offset

    def stream_now(self) -> float:
        """The time silence is judged at: the newest reading's own timestamp plus the time
        since it was handled, never ahead of ``now()``. Live, that is the wall clock; while
        a backlog drains (a replay after an outage or a restart) it is the backlog's own
        time, so the devices in it are not silent and one that really stopped is found
        silent at its own time (no ``device_silent`` storm when days of uplinks drain)."""
        if self._stream_ts is None:
            return self.now()
        return min(self.now(), self._stream_ts + (time.monotonic() - self._stream_mono))

    def checkpoint(self, wait: bool = False) -> bool:
        """Checkpoint device state as of ``handled_seq`` (pipeline thread, or with it
        stopped): the pending batch is scored first so no handled reading is left out."""
        cp = self.checkpointer
        if cp is None:
            return False
        self._flush()
        return cp.capture(self.handled_seq, wait=wait)

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
            if item is not None and item[0] is _STOP:
                self._flush()
                return
            if item is not None:
                self.idle.clear()
                self._take(item)
                # take what else is already waiting before deciding; the deadline still holds
                for _ in range(min(self.max_batch * 4, DRAIN_MAX)):
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt[0] is _STOP:
                        self._flush()
                        return
                    self._take(nxt)
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
            if item is None and not batcher and not self._queued:
                self.idle.set()

    def _take(self, item: tuple[Any, float, int]) -> None:
        work, ingested, n = item
        self._taken(n)
        if isinstance(work, list):
            self._handle_chunk(work, ingested)
        else:
            self._handle(work, ingested)

    def _handle(self, uplink: RawUplink | _Call, ingested: float | None = None) -> None:
        if isinstance(uplink, _Call):
            self._run_call(uplink)
            return
        self._handle_chunk([uplink], ingested)

    def _handle_chunk(self, uplinks: list[RawUplink], ingested: float | None = None) -> None:
        """Decode a chunk, feed its readings to the rules, observers and windows in order;
        due windows go to the batcher (their level steps deferred to the batch)."""
        policy, observers, windows, engine, batcher = self.policy, self.observers, self.windows, self.engine, self._batcher
        checkpointer = self.checkpointer
        defer = self.defer_level_steps
        n = 0
        newest = self._stream_ts
        for uplink, decoded in zip(uplinks, self.decoder.decode_chunk(uplinks)):
            if uplink.seq:
                self.handled_seq = uplink.seq
            if decoded is None:
                continue
            reading, profile = decoded
            n += 1
            ts = reading.timestamp
            if newest is None or ts >= newest:
                newest = ts
                self._stream_ts, self._stream_mono = ts, time.monotonic()
            if checkpointer is not None:
                checkpointer.mark(reading.device_id)
            field = profile.battery_field
            alerts = policy.on_reading(reading, reading.values.get(field) if field else None)
            if alerts:
                self.publish_alerts(alerts)
            for observer in observers:
                observer.observe_reading(reading, profile, uplink)
            window = windows.add(reading, list(profile.channels) if profile.channels else None, profile.adapter,
                                 exclude=field)
            if window.count == 1 and profile.expected_interval_s:  # a new (or re-admitted) device
                policy.set_expected_interval(reading.device_id, profile.expected_interval_s)
            due = engine.observe(window, defer_follow=defer)
            if due is not None:
                due.ingested = ingested
                full = batcher.add(due)
                if full:
                    self._score(full)
        if n:
            self.metrics.inc("readings_total", n)
            ahead = newest - time.time() if newest is not None else 0.0
            if ahead > self._clock_offset:
                self._clock_offset = ahead

    def _run_call(self, call: _Call) -> None:
        self._flush()
        try:
            call.fn()
        except Exception:  # noqa: BLE001 - a failing job must not stop the loop; counted and logged
            self.metrics.inc("pipeline_calls_failed_total")
            log.exception("a job queued on the pipeline failed")

    def _flush(self) -> None:
        """Score whatever is pending now."""
        windows = self._batcher.take()
        if windows:
            self._score(windows)

    def _score(self, windows: list[DueWindow]) -> None:
        try:
            groups = self.engine.score_groups(windows)
        except Exception as exc:  # noqa: BLE001 - inference failure is counted; the loop goes on
            self.metrics.inc("inference_failures_total", reason=type(exc).__name__)
            self.metrics.inc("windows_unscored_total", len(windows), reason="inference_failed")
            log.error("inference failed for a batch of %d windows: %s", len(windows), exc)
            return
        alerts: list[Alert] = []
        for group in groups:
            alerts.extend(on_scores(self.policy, group))
            for observer in self.score_observers:
                for i, due in enumerate(group.due):
                    observer.observe_score(due.window.device_id, due.timestamp, group.scores[i], group.details(i))
        if alerts:
            self.publish_alerts(alerts)
        decided = time.monotonic()
        latencies = [decided - due.ingested for group in groups for due in group.due if due.ingested is not None]
        if latencies:
            self.metrics.observe_many("decision_latency_seconds", latencies)

    def _periodic(self) -> None:
        now_mono = time.monotonic()
        if now_mono - self._last_periodic < 1.0:
            return
        self._last_periodic = now_mono
        alerts = self.policy.check_silent(self.stream_now())
        if alerts:
            if self.checkpointer is not None:
                for alert in alerts:
                    self.checkpointer.mark(alert.device_id)
            self.publish_alerts(alerts)
        if self.checkpointer is not None and self.checkpointer.due():
            self.checkpoint()
        self.metrics.set("ingest_queue_depth", self._queued)
        self.metrics.set("devices_tracked", len(self.windows))
        for job in self._periodic_jobs:
            job()


class CallbackObserver:
    """A ``ReadingObserver`` calling a plain function with each reading (embedding, tests)."""

    def __init__(self, callback: Callable[[Reading], None]) -> None:
        self.callback = callback

    def observe_reading(self, reading: Reading, profile: ProfileConfig, uplink: RawUplink) -> None:
        self.callback(reading)

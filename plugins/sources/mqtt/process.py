"""The ``mqtt`` source with its receive loop in a child process (``receive_process = true``).

Why: the gateway's Python runs under one GIL, and receiving plus parsing a message costs
about 30 µs of the ~150-230 µs a reading costs in one process (bench/RESULTS.md, 10). Here
paho and the JSON parse run in a spawned child (``plugins.sources.mqtt.child``) on the
other core; whole chunks cross a pipe (``plugins.sources.mqtt.chunk_codec``), and this
process only turns a chunk's columns into uplinks and accepts them.

Contract, per chunk (``ProcessMqttSource._serve``): the child sends the chunk; here
``deliver_chunk`` hands every uplink to ``emit`` and calls ``emit.commit()`` once (the
uplinks are in the ingest log, one fsync); then the reply goes back and only then does the
child send the chunk's PUBACKs. So acknowledged still means durable: a child that dies
takes only unacknowledged messages with it, which the broker delivers again (to the
restarted child) and the ingest's duplicate check drops where they were already logged. A
failed commit is replied as such; the child then closes the connection (redelivery), as
the in-process source does.

Supervision: a child that dies (its pipe closes without ``BYE``) is logged in one line,
counted (``receive_process_restarts_total{source}``) and started again after a back-off
(0.5 s doubling to 30 s); ``max_restarts`` deaths in a row (a child that ran 60 s resets
the count) leave the source down (``receive_process_up`` 0, ``connected()`` False, which
``/health`` reports). ``stop()`` asks the child to finish the chunks in flight, disconnect
and exit, and still answers it meanwhile; a child that does not exit in time is killed.

Queues: the child holds at most ``inflight`` chunks without a reply, so at most that many
wait in the pipe for this side; both ends block when full (TCP back-pressure on the
broker, which keeps the messages), because a message dropped before the log would stay
unacknowledged on the broker until the next reconnect.

Metrics: the child's counters and gauges (``uplinks_received_total``,
``uplinks_rejected_total{reason}``, ``mqtt_connects_total``, ``source_connected``...) travel
as deltas with each chunk and state message and are added to this process's registry, so
``/metrics`` reads the same with the option on or off.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from gateway.contracts import Emit, PluginContext
from plugins.sources.mqtt import chunk_codec as wire
from plugins.sources.mqtt.receive import batched_receive_supported

log = logging.getLogger(__name__)

HEALTHY_RUN_S = 60.0
"""A child that ran this long before dying starts the restart count again."""
STOP_TIMEOUT_S = 15.0


def deliver_chunk(emit: Emit, columns: wire.Columns, source: str) -> bool:
    """Hand one received chunk to the gateway through the source contract: ``emit`` per
    uplink, then one ``emit.commit()`` (durable when it returns True). True when the chunk
    may be acknowledged. The one place a chunk enters the gateway (a columnar ingest would
    take ``columns`` as they are)."""
    for uplink in wire.unpack_uplinks(columns, source):
        emit(uplink)
    commit = getattr(emit, "commit", None)
    return bool(commit()) if callable(commit) else True


class ProcessMqttSource:
    """A ``gateway.contracts.Source`` whose MQTT client runs in a child process."""

    redelivers = True  # the broker sends unacknowledged messages again (gateway.ingest.accept)

    def __init__(self, name: str, options: Any, context: PluginContext) -> None:
        self.name = name
        self.options = options
        self.metrics = context.metrics
        self.gateway_id = context.gateway_id
        self.client_id = options.client_id or f"{context.gateway_id}-{name}"
        self._emit: Emit | None = None
        self._conn: Connection | None = None
        self._proc: BaseProcess | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # STOP (any thread) and the replies share the pipe
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._auth_failed = False
        self._started_at = 0.0
        for metric, text in (
            ("receive_process_restarts_total", "MQTT receive processes started again after they died"),
            ("receive_process_chunks_total", "Chunks received from the MQTT receive process"),
            ("receive_process_up", "1 while the MQTT receive process runs"),
        ):
            self.metrics.describe(metric, text)

    # ---- Source contract -------------------------------------------------------------
    def start(self, emit: Emit) -> None:
        if not batched_receive_supported():
            raise RuntimeError(f"mqtt source {self.name}: receive_process needs the batched receive client, "
                               "which this paho-mqtt does not support")
        self._emit = emit
        self._spawn()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.name}-receive-process", daemon=True)
        self._thread.start()
        log.info("mqtt source %s: receiving in process %s (%s:%s as %s)", self.name, self.child_pid(),
                 self.options.host, self.options.port, self.client_id)

    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def auth_failed(self) -> bool:
        return self._auth_failed

    def wait_connected(self, timeout: float) -> bool:
        """Block until the child reports a connection (start-up readiness and tests)."""
        return self._connected.wait(timeout)

    def child_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def stop(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            conn = self._conn
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send_bytes(wire.encode((wire.STOP,)))
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        self._reap(2.0)
        self._connected.clear()
        self.metrics.set("source_connected", 0, source=self.name)

    # ---- the child -------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {"name": self.name, "client_id": self.client_id, "gateway_id": self.gateway_id,
                "options": self.options.model_dump(mode="json"), "inflight": self.options.receive_process_inflight,
                "log_level": logging.getLogger().getEffectiveLevel()}

    def _spawn(self) -> None:
        from plugins.sources.mqtt.child import child_main

        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=child_main, args=(child_end, self._settings()), name=f"lora-gateway-mqtt-{self.name}",
                           daemon=True)
        with self._lock:
            if self._stopping.is_set():
                parent_end.close()
                child_end.close()
                return
            proc.start()
            child_end.close()  # the child holds its end; ours closes so its death reads as EOF here
            self._proc, self._conn = proc, parent_end
        self._started_at = time.monotonic()
        self.metrics.set("receive_process_up", 1, source=self.name)

    def _reap(self, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        proc.join(timeout)
        if proc.is_alive():
            log.warning("mqtt source %s: receive process %s did not exit; killing it", self.name, proc.pid)
            proc.kill()
            proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self.metrics.set("receive_process_up", 0, source=self.name)
        return proc.exitcode

    def _run(self) -> None:
        deaths = 0
        while True:
            clean = self._serve()
            if clean or self._stopping.is_set():
                return
            ran = time.monotonic() - self._started_at
            code = self._reap(2.0)
            self._connected.clear()
            self.metrics.set("source_connected", 0, source=self.name)
            deaths = 1 if ran >= HEALTHY_RUN_S else deaths + 1
            if deaths > self.options.receive_process_max_restarts:
                log.error("mqtt source %s: receive process died %d times in a row (exit code %s); not restarting it",
                          self.name, deaths, code)
                return
            delay = min(30.0, 0.5 * 2 ** (deaths - 1))
            self.metrics.inc("receive_process_restarts_total", source=self.name)
            log.warning("mqtt source %s: receive process died (exit code %s) after %.1f s; restarting it in %.1f s "
                        "(unacknowledged uplinks come again from the broker)", self.name, code, ran, delay)
            if self._stopping.wait(delay):
                return
            self._spawn()

    def _serve(self) -> bool:
        """Answer one child until it says BYE (True) or its pipe closes (False)."""
        conn = self._conn
        emit = self._emit
        if conn is None or emit is None:
            return False
        while True:
            try:
                message = wire.decode(conn.recv_bytes())
            except (EOFError, OSError, ValueError, TypeError):
                return False
            kind = message[0]
            if kind == wire.CHUNK:
                _, chunk_id, columns, counters, gauges = message
                self._apply(counters, gauges)
                self.metrics.inc("receive_process_chunks_total", source=self.name)
                try:
                    durable = deliver_chunk(emit, columns, self.name)
                except Exception:  # noqa: BLE001 - not durable: no acks, the broker keeps the messages
                    log.exception("mqtt source %s: accepting a chunk from the receive process failed", self.name)
                    durable = False
                try:
                    with self._send_lock:
                        conn.send_bytes(wire.encode((wire.ACK, chunk_id, durable)))
                except OSError:
                    return False
            elif kind == wire.STATE:
                _, connected, auth_failed, counters, gauges = message
                self._apply(counters, gauges)
                self._auth_failed = bool(auth_failed)
                if connected:
                    self._connected.set()
                else:
                    self._connected.clear()
            elif kind == wire.LOG:
                logging.getLogger(str(message[2])).log(int(message[1]), "[receive process] %s", message[3])
            elif kind == wire.BYE:
                self._apply(message[1], message[2])
                return True

    def _apply(self, counters: wire.MetricDelta, gauges: wire.MetricDelta) -> None:
        for name, labels, amount in counters:
            self.metrics.inc(name, amount, **dict(labels))
        for name, labels, value in gauges:
            self.metrics.set(name, value, **dict(labels))

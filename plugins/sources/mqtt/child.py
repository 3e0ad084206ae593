"""The receive process of the ``mqtt`` source (``receive_process = true``): paho and the JSON
parse on the other core.

``child_main`` runs in a process spawned by ``plugins.sources.mqtt.process.ProcessMqttSource``.
It is the in-process source (``MqttSource``: same connection, subscriptions, shapes and
reject counting) with two changes:

- its ``emit`` collects the parsed uplinks of the chunk being read, and at the end of each
  socket read (``BatchedReceiveClient.loop_read``) the whole chunk goes to the parent as one
  pipe message (``plugins.sources.mqtt.chunk_codec``), with the metric changes since the
  last message;
- the chunk's PUBACKs are held until the parent replies that the chunk is durable (in the
  ingest log). Up to ``inflight`` chunks wait for replies at once, so the child reads and
  parses the next chunk while the parent logs the last; a full window blocks the reading
  thread (TCP back-pressure: the broker keeps the messages), it never drops. Replies come in
  chunk order, so PUBACKs leave in the order the PUBLISHes came (MQTT 4.6). A reply for a
  connection that has since closed is not sent (the broker delivers those messages again
  and the parent's duplicate check drops the copies); a failed commit closes the
  connection, as the in-process source does.

Threads: paho's network thread reads, parses and submits chunks; the main thread reads the
parent's replies. SIGINT and SIGTERM are ignored (a terminal's Ctrl-C or systemd's SIGTERM
reach the whole process group): the parent decides when the child stops (``STOP``), and a
parent that died closes the pipe, which ends the child. Log records go to the parent
(``LOG``); nothing is written to this process's own stdout.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from paho.mqtt import client as mqtt

from gateway.broker.options import connect_properties, make_client
from gateway.contracts import PluginContext
from gateway.metrics import Metrics
from gateway.types import RawUplink
from plugins.sources.mqtt import chunk_codec as wire
from plugins.sources.mqtt.receive import BatchedReceiveClient
from plugins.sources.mqtt.source import MqttSource, MqttSourceOptions

log = logging.getLogger(__name__)

_PUBACK = 0x40
DRAIN_TIMEOUT_S = 10.0
"""How long a stopping child waits for the replies of the chunks in flight."""


class DeltaMetrics(Metrics):
    """Metrics that only remember what changed since ``take()``: the parent keeps the totals."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._levels: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._delta_lock = threading.Lock()

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._delta_lock:
            self._counts[key] = self._counts.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._delta_lock:
            self._levels[(name, tuple(sorted(labels.items())))] = value

    def take(self) -> tuple[wire.MetricDelta, wire.MetricDelta]:
        with self._delta_lock:
            counts, self._counts = self._counts, {}
            levels, self._levels = self._levels, {}
        return [(n, lb, v) for (n, lb), v in counts.items()], [(n, lb, v) for (n, lb), v in levels.items()]


class ChunkClient(BatchedReceiveClient):
    """The batched client whose per-chunk PUBACKs are handed to ``on_chunk`` instead of sent.

    ``generation`` counts closed connections: acks belong to the connection they were
    collected on, and ``queue_acks`` sends them only while that connection is still open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation = 0
        self._gen_lock = threading.Lock()
        self.on_chunk: Callable[[bytes, int], None] | None = None

    def _flush_acks(self) -> None:
        acks = bytes(self._acks)
        self._acks.clear()
        if self.on_chunk is not None:
            self.on_chunk(acks, self.generation)

    def _sock_close(self) -> None:
        with self._gen_lock:
            self.generation += 1
        super()._sock_close()

    def queue_acks(self, acks: bytes, generation: int) -> bool:
        """Queue a durable chunk's PUBACKs (any thread); False when its connection is gone."""
        with self._gen_lock:
            if generation != self.generation or self._sock is None:
                return False
            self._packet_queue(_PUBACK, acks, 0, 0)
            return True

    def fail_connection(self, generation: int) -> None:
        """Close the connection (any thread) so paho reconnects and the broker redelivers."""
        with self._gen_lock:
            sock = self._sock
            if generation == self.generation and sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Link:
    """The child's end of the pipe: chunk submission with the in-flight window, replies."""

    def __init__(self, conn: Connection, metrics: DeltaMetrics, inflight: int, source: str) -> None:
        self.conn = conn
        self.metrics = metrics
        self.max_inflight = max(1, inflight)
        self.source = source
        self.pending: list[RawUplink] = []
        self.client: ChunkClient | None = None
        self._send_lock = threading.RLock()
        self._cond = threading.Condition()
        self._inflight: deque[tuple[int, int, bytes]] = deque()  # (chunk id, connection generation, acks)
        self._next_id = 1
        self.stopping = False

    def send(self, message: tuple[Any, ...]) -> None:
        data = wire.encode(message)
        with self._send_lock:
            self.conn.send_bytes(data)

    def emit(self, uplink: RawUplink) -> None:
        """The source's ``emit`` (paho's thread): the uplink joins the chunk being read."""
        self.pending.append(uplink)

    def on_chunk(self, acks: bytes, generation: int) -> None:
        """End of one socket read (paho's thread): send the chunk, hold its acks."""
        uplinks, self.pending = self.pending, []
        if not uplinks and not acks:
            return
        with self._cond:
            while len(self._inflight) >= self.max_inflight and not self.stopping:
                self._cond.wait(0.5)
            if self.stopping:  # not acknowledged: the broker delivers these again
                self.metrics.inc("receive_process_unsent_total", len(uplinks), source=self.source, reason="stopping")
                return
            chunk_id = self._next_id
            self._next_id += 1
            self._inflight.append((chunk_id, generation, acks))
        counters, gauges = self.metrics.take()
        self.send((wire.CHUNK, chunk_id, wire.pack_uplinks(uplinks), counters, gauges))

    def send_state(self, connected: bool, auth_failed: bool) -> None:
        counters, gauges = self.metrics.take()
        self.send((wire.STATE, connected, auth_failed, counters, gauges))

    def serve(self) -> bool:
        """Read the parent's replies until STOP and an empty window (True) or a closed pipe
        (False: the parent is gone)."""
        while True:
            if self.stopping:
                with self._cond:
                    if not self._inflight:
                        return True
            try:
                if self.stopping and not self.conn.poll(DRAIN_TIMEOUT_S):
                    log.warning("mqtt receive process: no reply for %d chunk(s) in flight; stopping without their acks",
                                len(self._inflight))
                    return True
                message = wire.decode(self.conn.recv_bytes())
            except (EOFError, OSError):
                return False
            if message[0] == wire.ACK:
                self._reply(int(message[1]), bool(message[2]))
            elif message[0] == wire.STOP:
                with self._cond:
                    self.stopping = True
                    self._cond.notify_all()

    def _reply(self, chunk_id: int, durable: bool) -> None:
        with self._cond:
            got, generation, acks = self._inflight.popleft()
            self._cond.notify_all()
        if got != chunk_id:  # a broken pipe protocol: never send acks that may not match
            raise RuntimeError(f"reply for chunk {chunk_id} while chunk {got} was the oldest in flight")
        client = self.client
        if client is None:
            return
        if not durable:
            client.fail_connection(generation)
        elif acks and not client.queue_acks(acks, generation):
            self.metrics.inc("receive_process_acks_unsent_total", len(acks) // 4, source=self.source)


class ChildSource(MqttSource):
    """``MqttSource`` on a ``ChunkClient``, reporting connection changes to the parent."""

    def __init__(self, name: str, options: MqttSourceOptions, context: PluginContext, link: Link) -> None:
        super().__init__(name, options, context)
        self.link = link

    def start(self, emit: Any) -> None:
        self._emit = emit
        client = make_client(self.options, self.client_id, self.options.persistent_session, client_class=ChunkClient)
        assert isinstance(client, ChunkClient)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_chunk = self.link.on_chunk
        self.link.client = client
        self._client = client
        props = connect_properties(self.options, self.options.session_expiry_s if self.options.persistent_session else 0)
        kwargs: dict[str, Any] = {"keepalive": self.options.keepalive_s}
        if self.options.protocol == "5":
            kwargs["clean_start"] = not self.options.persistent_session
            kwargs["properties"] = props
        client.connect_async(self.options.host, self.options.port, **kwargs)
        client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        super()._on_connect(client, userdata, flags, reason_code, properties)
        if not self.connected():
            self.link.send_state(False, self.auth_failed)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        """The parent hears "connected" once the broker confirmed the subscriptions, so
        whatever is published after ``wait_connected`` reaches this session."""
        self.link.send_state(self.connected(), self.auth_failed)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        self.link.send_state(False, self.auth_failed)


class _PipeLogHandler(logging.Handler):
    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.link.send((wire.LOG, record.levelno, record.name, self.format(record)))
        except Exception:  # noqa: BLE001 - the parent is gone; the record has nowhere to go
            pass


def child_main(conn: Connection, settings: dict[str, Any]) -> None:
    """Entry point of the receive process. ``settings``: ``name``, ``client_id``,
    ``gateway_id``, ``options`` (``MqttSourceOptions`` as a dict), ``inflight``, ``log_level``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    name = str(settings["name"])
    metrics = DeltaMetrics()
    link = Link(conn, metrics, int(settings["inflight"]), name)
    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(link)]
    root.setLevel(int(settings.get("log_level", logging.INFO)))
    options = MqttSourceOptions.model_validate(settings["options"])
    options = options.model_copy(update={"client_id": settings["client_id"]})
    source = ChildSource(name, options, PluginContext(metrics=metrics, gateway_id=str(settings["gateway_id"])), link)
    source.start(link.emit)
    code = 0
    try:
        if link.serve():
            source.stop()  # the PUBACKs queued so far leave before the DISCONNECT
            counters, gauges = metrics.take()
            link.send((wire.BYE, counters, gauges))
    except Exception:  # noqa: BLE001 - one line to the parent, which restarts the process
        log.exception("mqtt receive process %s failed", name)
        code = 1
    finally:
        conn.close()
        os._exit(code)  # paho's thread need not be joined: unsent acks mean redelivery, never loss

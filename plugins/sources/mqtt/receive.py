"""A paho client with a batched receive path, for subscribers that take many small messages.

paho 2.x reads one packet per select: a 1-byte ``recv`` for the command, one per byte of
the remaining length, one for the body, and then sends each QoS 1 PUBACK on its own (in
threaded mode after a wake-up byte through its socket pair). That is about eight system
calls per message, each of which releases and re-takes the GIL.

``BatchedReceiveClient`` keeps paho's packet handling, sessions, keep-alive, TLS and
reconnects, and changes only how bytes move:

- the socket is read in chunks of up to ``READ_CHUNK`` bytes; paho's small reads are
  served from that buffer, and ``loop_read`` handles every complete packet of one chunk
  (one ``recv`` per call, so keep-alive and writes still run between chunks; a packet cut
  at the chunk's end stays in paho's partial-packet state and the socket stays readable);
- an MQTT v5 QoS 1 PUBLISH without properties (what network servers send) is decoded
  here without building a ``Properties`` object per message (about a third of paho's
  per-message Python time); its ``message.properties`` is one shared, empty
  ``Properties`` that callers must not modify. Anything else goes through paho's decoder;
- QoS 1 PUBACKs for the messages of one chunk are collected and queued as one write after
  the chunk (each still after its message's ``on_message`` returned, so at-least-once holds:
  a message whose PUBACK never left is redelivered by the broker), and only once
  ``before_acks()`` said the chunk is durable (acknowledged means durable: the MQTT source
  writes the chunk's uplinks to the ingest log there, one fsync per chunk).

Contract: the same behaviour as ``paho.mqtt.client.Client`` for callers. Buffered bytes
and unsent acknowledgements belong to one connection and are discarded when its socket
closes. It overrides private paho methods (``_sock_recv``, ``_send_puback``,
``_sock_close``, ``_handle_publish``, ...); ``batched_receive_supported()`` checks they exist, and
``receive_client_class`` falls back to the plain client when they do not.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

READ_CHUNK = 65536
"""Largest single ``recv``; a chunk holds a few hundred typical uplinks."""

_PUBACK = 0x40
_PAHO_HOOKS = ("_sock_recv", "_send_puback", "_sock_close", "_packet_read", "_packet_queue", "_loop_rc_handle",
               "_handle_publish", "_handle_on_message")
_NO_PROPERTIES = Properties(PacketTypes.PUBLISH)


def batched_receive_supported() -> bool:
    """True when the installed paho has the internals this client builds on."""
    return all(callable(getattr(mqtt.Client, name, None)) for name in _PAHO_HOOKS)


class BatchedReceiveClient(mqtt.Client):
    """``paho.mqtt.client.Client`` reading in chunks and acknowledging QoS 1 per chunk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._acks = bytearray()
        self._collect_acks = False
        self._fresh_reads = -1  # socket reads left in this loop_read (-1: no limit, outside it)
        self.before_acks: Callable[[], bool] | None = None  # see loop_read

    # ---- reading ----------------------------------------------------------------------
    def _sock_recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes, from the buffer when it holds any, else from one big recv.

        Raises what paho's own ``_sock_recv`` raises (BlockingIOError when nothing is there);
        ``b""`` means the peer closed the connection.
        """
        pos = self._rpos
        buf = self._rbuf
        if pos >= len(buf):
            if self._fresh_reads == 0:
                raise BlockingIOError  # this loop_read has had its chunk; the socket stays readable
            self._fresh_reads -= 1
            data: bytes = super()._sock_recv(READ_CHUNK if bufsize < READ_CHUNK else bufsize)
            if len(data) <= bufsize:
                return data
            self._rbuf = buf = data
            pos = 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def buffered_bytes(self) -> int:
        """Bytes received and not yet handed to paho's packet reader."""
        return len(self._rbuf) - self._rpos

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Handle every complete packet of one received chunk (one ``recv`` serves many),
        then queue the collected PUBACKs as one write.

        Before the PUBACKs go, ``before_acks()`` (when set) must return True: the source makes
        the chunk's uplinks durable there (``gateway.ingest.accept``). When it returns False
        (or raises) the chunk's PUBACKs are dropped and the connection is closed, so the
        broker delivers those messages again on the next connection (paho reconnects).
        The PUBACKs go out however the chunk ends, also when ``on_message`` raised (then for
        the messages before that one, as paho would have sent them); a connection that failed
        took its collected PUBACKs with it (``_sock_close``)."""
        if self._sock is None:
            return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
        self._collect_acks = True
        self._fresh_reads = 0 if self._rpos < len(self._rbuf) else 1
        durable = True
        try:
            rc = self._read_chunk()
        finally:
            self._collect_acks = False
            self._fresh_reads = -1
            durable = self._chunk_durable()
            if durable:
                self._flush_acks()
            else:
                self._acks.clear()
        if not durable and self._sock is not None:
            return self._loop_rc_handle(mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST)  # closes the socket
        return rc

    def _read_chunk(self) -> mqtt.MQTTErrorCode:
        while True:
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)  # closes the socket
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN or self._rpos >= len(self._rbuf):
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _chunk_durable(self) -> bool:
        hook = self.before_acks
        if hook is None:
            return True
        try:
            return bool(hook())
        except Exception:  # noqa: BLE001 - not durable: no acks, the broker keeps the messages
            log.exception("making a received chunk durable failed; its messages stay unacknowledged")
            return False

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        """paho's PUBLISH handling, minus the per-message ``Properties`` for v5 QoS 1 without
        properties; every other PUBLISH (and any packet that does not parse) goes to paho."""
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        if self._protocol != mqtt.MQTTv5 or (header & 0x06) != 0x02 or self._manual_ack:
            return super()._handle_publish()  # type: ignore[no-any-return]
        n = len(packet)
        if n < 5:
            return super()._handle_publish()  # type: ignore[no-any-return]
        p = 2 + ((packet[0] << 8) | packet[1])
        if p + 3 > n or packet[p + 2] != 0:  # truncated, or it carries properties
            return super()._handle_publish()  # type: ignore[no-any-return]
        message = mqtt.MQTTMessage(mid=(packet[p] << 8) | packet[p + 1], topic=bytes(packet[2:p]))
        message.dup = bool(header & 0x08)
        message.qos = 1
        message.retain = bool(header & 0x01)
        message.properties = _NO_PROPERTIES
        message.payload = bytes(packet[p + 3:])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        return self._send_puback(message.mid)

    # ---- acknowledging ----------------------------------------------------------------
    def _send_puback(self, mid: int) -> mqtt.MQTTErrorCode:
        if not self._collect_acks or self._manual_ack:  # manual acks may come from any thread
            return super()._send_puback(mid)  # type: ignore[no-any-return]
        # remaining length 2: success without properties (MQTT v5 3.4.2.1; v3.1.1's only form)
        self._acks += struct.pack("!BBH", _PUBACK, 2, mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _flush_acks(self) -> None:
        if self._acks and self._sock is not None:
            packet = bytes(self._acks)
            self._acks.clear()
            self._packet_queue(_PUBACK, packet, 0, 0)

    def _sock_close(self) -> None:
        # buffered bytes and pending acks belong to the connection that is closing
        self._rbuf = b""
        self._rpos = 0
        self._acks.clear()
        super()._sock_close()


def receive_client_class() -> type[mqtt.Client]:
    """The batched client where the installed paho supports it, else paho's own client."""
    return BatchedReceiveClient if batched_receive_supported() else mqtt.Client

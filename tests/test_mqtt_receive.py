"""The batched paho client (plugins.sources.mqtt.receive) against a real Mosquitto: every message
arrives intact and in order, QoS 1 acks reach the broker, one recv serves many messages,
and a connection that closes mid-chunk loses nothing (unacked messages come again)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.broker.options import BrokerOptions, connect_properties, make_client
from gateway.contracts import PluginContext
from gateway.metrics import Metrics
from plugins.sources.mqtt.receive import (
    READ_CHUNK,
    BatchedReceiveClient,
    batched_receive_supported,
    receive_client_class,
)
from plugins.sources.mqtt.source import MqttSource, MqttSourceOptions

TOPIC = "bench/batched/{}"


class CountingClient(BatchedReceiveClient):
    """Counts the socket reads underneath the buffer."""

    socket_reads = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf) and self._fresh_reads != 0:
            CountingClient.socket_reads += 1
        return super()._sock_recv(bufsize)


def _connect(broker: Any, client_id: str, protocol: str, cls: type[mqtt.Client] = CountingClient) -> mqtt.Client:
    opts = BrokerOptions(host=broker.host, port=broker.port, protocol=protocol)  # type: ignore[arg-type]
    v5 = protocol == "5"
    client = cls(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                 protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else False)
    kwargs: dict[str, Any] = {"clean_start": False, "properties": connect_properties(opts, 3600)} if v5 else {}
    client.connect(broker.host, broker.port, **kwargs)
    return client


def _register_session(broker: Any, client_id: str, protocol: str) -> None:
    c = _connect(broker, client_id, protocol, mqtt.Client)
    c.subscribe(TOPIC.format("#"), 1)
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


def _publish(broker: Any, messages: list[tuple[str, bytes, Properties | None]]) -> None:
    pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="pub",
                      protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    infos = [pub.publish(topic, body, qos=1, properties=props) for topic, body, props in messages]
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()


def _messages(n: int) -> list[tuple[str, bytes, Properties | None]]:
    """Small bodies, a few larger than a read chunk, some with v5 properties (paho's path)."""
    out: list[tuple[str, bytes, Properties | None]] = []
    for i in range(n):
        body = f"msg-{i:05d}-".encode() + bytes(range(256))[: i % 300]
        if i % 500 == 250:
            body = f"msg-{i:05d}-".encode() + b"x" * (READ_CHUNK + 1000)
        props = None
        if i % 97 == 3:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("k", str(i))
        out.append((TOPIC.format(i % 7), body, props))
    return out


def _receive(client: mqtt.Client, want: int, timeout: float = 30.0) -> list[mqtt.MQTTMessage]:
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(msg)
        if len(got) >= want:
            done.set()

    client.on_message = on_message
    client.loop_start()
    done.wait(timeout)
    return got


def _stop_once_broker_has_the_acks(client: mqtt.Client) -> None:
    """Stop the network thread, then make one QoS 1 round trip on the same connection.

    ``loop_stop`` lets the thread finish the read in progress and write what it queued (its
    acks). The broker handles one connection's packets in order, so its PUBACK for the
    marker means it has read every PUBACK sent before it. Without this, a reconnect with the
    same client id can reach the broker while the old socket still holds unread PUBACKs:
    Mosquitto takes the session over, drops the old connection with them, and sends those
    messages again (a test race, not a lost ack: the client had written them all).
    """
    client.loop_stop()
    marker = client.publish("bench/marker", b"", qos=1)  # no thread: written right here
    deadline = time.monotonic() + 10
    while not marker.is_published() and time.monotonic() < deadline:
        client.loop(0.1)
    assert marker.is_published(), "the broker did not acknowledge the marker"


def test_installed_paho_has_what_the_batched_client_needs_and_the_source_uses_it() -> None:
    assert batched_receive_supported()
    client = make_client(BrokerOptions(), "x", True, client_class=receive_client_class())
    assert type(client) is BatchedReceiveClient
    assert type(make_client(BrokerOptions(), "y", True)) is mqtt.Client  # handlers keep the plain one
    source = MqttSource("s", MqttSourceOptions(port=1), PluginContext(metrics=Metrics(), gateway_id="g", state_dir="/tmp"))
    source.start(lambda uplink: None)
    try:
        assert type(source._client) is BatchedReceiveClient
    finally:
        source.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_backlog_arrives_intact_in_order_and_acked(broker, protocol: str) -> None:
    cid = f"batched-{protocol}"
    _register_session(broker, cid, protocol)
    sent = _messages(2000)
    _publish(broker, sent)
    CountingClient.socket_reads = 0
    client = _connect(broker, cid, protocol)
    try:
        got = _receive(client, len(sent))
        _stop_once_broker_has_the_acks(client)
    finally:
        client.disconnect()
        client.loop_stop()
    assert [(m.topic, m.payload) for m in got] == [(t, b) for t, b, _ in sent]
    with_props = [m for m in got if m.properties is not None and getattr(m.properties, "UserProperty", None)]
    assert len(with_props) == (sum(1 for *_, p in sent if p is not None) if protocol == "5" else 0)
    # one read serves many messages (paho alone: 3-4 reads per message)
    assert CountingClient.socket_reads < len(sent) / 5, CountingClient.socket_reads
    # every message was acknowledged: the session holds nothing more
    again = _connect(broker, cid, protocol, mqtt.Client)
    try:
        leftover = _receive(again, 1, timeout=1.5)
        assert leftover == [], [(m.mid, m.payload[:10]) for m in leftover]
    finally:
        again.disconnect()
        again.loop_stop()


class AckRecordingClient(BatchedReceiveClient):
    """Records the packet ids of the PUBACKs written to the socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acked: list[int] = []

    def _sock_send(self, buf: bytes) -> int:
        n: int = super()._sock_send(buf)
        data = bytes(buf[:n])
        if data[:1] == b"\x40":  # a write of this client's PUBACKs: 4 bytes each
            self.acked += [(data[i + 2] << 8) | data[i + 3] for i in range(0, n, 4)]
        return n


def test_acks_of_handed_on_messages_leave_when_on_message_raises(broker) -> None:
    """An exception from ``on_message`` stops the chunk (as in paho); the messages handed on
    before it in that chunk are still acknowledged, the one that raised is not."""
    cid = "batched-raise"
    _register_session(broker, cid, "5")
    _publish(broker, _messages(200))
    client = _connect(broker, cid, "5", AckRecordingClient)
    assert isinstance(client, AckRecordingClient)
    handed: list[int] = []

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if len(handed) == 50:
            assert c._acks, "the messages before this one came in an earlier chunk: nothing to test"
            raise RuntimeError("handler failed")
        handed.append(msg.mid)

    client.on_message = on_message
    try:
        with pytest.raises(RuntimeError, match="handler failed"):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                client.loop(0.1)  # no network thread: acks are written as soon as queued
        assert client.acked == handed
    finally:
        client.disconnect()


def test_connection_closed_mid_chunk_loses_nothing(broker) -> None:
    """Acks collected for a chunk are dropped with the connection; the broker sends those
    messages again, so every message arrives at least once."""
    cid = "batched-cut"
    _register_session(broker, cid, "5")
    sent = _messages(1500)
    _publish(broker, sent)
    client = _connect(broker, cid, "5")
    seen: list[bytes] = []
    cut = threading.Event()

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        seen.append(msg.payload)
        if len(seen) == 300:
            c.disconnect()  # DISCONNECT is queued before this chunk's acks: they never leave
            cut.set()

    client.on_message = on_message
    client.loop_start()
    assert cut.wait(20)
    time.sleep(0.5)
    client.loop_stop()
    assert len(seen) < len(sent)
    want = {b for _, b, _ in sent}
    first = set(seen)
    redelivered: list[mqtt.MQTTMessage] = []
    complete = threading.Event()

    def on_message_again(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        redelivered.append(msg)
        first.add(msg.payload)
        if first >= want:
            complete.set()

    client = _connect(broker, cid, "5")
    client.on_message = on_message_again
    client.loop_start()
    try:
        assert complete.wait(30), f"{len(want - first)} messages never arrived"
    finally:
        client.disconnect()
        client.loop_stop()
    assert first == want
    assert any(m.dup for m in redelivered)  # sent again because their acks never left

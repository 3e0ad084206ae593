"""The ``mqtt`` source: uplinks from a LoRaWAN network server's MQTT integration.

Subscribes (QoS 1) to the configured topics in a persistent session, so uplinks published
while the gateway is down are delivered when it returns; subscriptions are renewed in
every on_connect. Each message is parsed into a RawUplink (plugins.sources.mqtt.shapes) on
paho's thread, which is cheap and never sleeps; bad messages are counted by reason
(``uplinks_rejected_total{source,reason}``) and never raise.

The client is ``plugins.sources.mqtt.receive.BatchedReceiveClient``: one socket read serves many
messages and their QoS 1 PUBACKs leave in one write per read (after each message was
handed on), which cuts paho's per-message cost about 4x (bench/RESULTS.md, 1d). When
``emit`` has ``commit`` (the daemon's ``gateway.ingest.accept.SourceEmitter``), the
client calls it before a chunk's PUBACKs leave: the uplinks are in the ingest log (one
fsync per chunk) before the broker forgets them; a failed commit withholds the PUBACKs
and reconnects, so the broker delivers the messages again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from paho.mqtt import client as mqtt
from pydantic import BaseModel, ConfigDict, Field

from gateway.broker.options import AUTH_FAILURE_CODES, BrokerOptions, connect_properties, make_client
from gateway.contracts import Emit, PluginContext
from gateway.hookspecs import hookimpl
from gateway.types import RawUplink
from plugins.sources.mqtt.receive import receive_client_class
from plugins.sources.mqtt.shapes import SHAPES, UplinkShapeError, parse_uplink, topic_matches

log = logging.getLogger(__name__)


class TopicOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: str = Field(description="Subscription filter, e.g. application/+/device/+/event/up.")
    shape: str = Field("auto", description="Uplink shape: chirpstack_v4, chirpstack_v3, tts_v3, json or auto.")


class MqttSourceOptions(BrokerOptions):
    topics: list[TopicOptions] = Field(
        default_factory=lambda: [
            TopicOptions(topic="application/+/device/+/event/up", shape="chirpstack_v4"),
            TopicOptions(topic="v3/+/devices/+/up", shape="tts_v3"),
        ],
        description="Topics to subscribe to, each with the uplink shape it carries.",
    )
    qos: int = Field(1, ge=0, le=2, description="Subscription QoS (1 for at-least-once).")
    persistent_session: bool = Field(True, description="Keep the session (and queued uplinks) on the broker while the gateway is away.")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="MQTT v5 session expiry.")
    shared_group: str | None = Field(None, description="MQTT v5 shared-subscription group ($share/<group>/...) to split a feed across several gateways.")
    max_payload_bytes: int = Field(65536, ge=256, description="Larger messages are rejected (reason too_large).")
    receive_process: bool = Field(False, description="Receive and parse in a child process (the other core); whole chunks reach "
                                  "the scoring process through a pipe, and PUBACKs still leave only after the ingest log holds "
                                  "the chunk (plugins/sources/mqtt/process.py).")
    receive_process_inflight: int = Field(4, ge=1, le=64, description="Chunks the receive process may have waiting for the "
                                          "ingest log at once (it reads ahead while one is logged); a full window stops reading.")
    receive_process_max_restarts: int = Field(5, ge=0, description="Deaths in a row after which the receive process is not "
                                              "started again (a process that ran 60 s resets the count).")


class MqttSource:
    """A Source (gateway.contracts) reading uplinks from an MQTT broker."""

    def __init__(self, name: str, options: MqttSourceOptions, context: PluginContext) -> None:
        self.name = name
        self.options = options
        self.metrics = context.metrics
        self.client_id = options.client_id or f"{context.gateway_id}-{name}"
        self._emit: Emit | None = None
        self._connected = threading.Event()
        self._auth_failed = False
        self._client: mqtt.Client | None = None
        self._shapes = [(t.topic, t.shape) for t in options.topics]
        self.redelivers = True  # the broker sends unacknowledged messages again (gateway.ingest.accept)
        self._commit_each: Any = None  # plain paho (no batched receive): commit per message

    def _filters(self) -> list[str]:
        """The subscription filter per configured topic (shared when ``shared_group`` is set)."""
        group = self.options.shared_group
        return [f"$share/{group}/{t.topic}" if group else t.topic for t in self.options.topics]

    def start(self, emit: Emit) -> None:
        self._emit = emit
        client = make_client(self.options, self.client_id, self.options.persistent_session,
                             client_class=receive_client_class())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        commit = getattr(emit, "commit", None)
        if callable(commit):
            if hasattr(client, "before_acks"):
                client.before_acks = commit  # a received chunk is acknowledged once it is durable
            else:
                log.warning("mqtt source %s: this paho has no batched receive; uplinks are acknowledged on "
                            "arrival, before they are on disk", self.name)
                self._commit_each = commit
        self._client = client
        props = connect_properties(self.options, self.options.session_expiry_s if self.options.persistent_session else 0)
        kwargs: dict[str, Any] = {"keepalive": self.options.keepalive_s}
        if self.options.protocol == "5":
            kwargs["clean_start"] = not self.options.persistent_session
            kwargs["properties"] = props
        client.connect_async(self.options.host, self.options.port, **kwargs)
        client.loop_start()
        log.info("mqtt source %s connecting to %s:%s as %s", self.name, self.options.host, self.options.port, self.client_id)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.metrics.inc("mqtt_connect_failures_total", source=self.name, reason=str(reason_code))
            if int(reason_code.value) in AUTH_FAILURE_CODES:
                self._auth_failed = True
                log.error("mqtt source %s: broker refused the credentials (%s); not retrying", self.name, reason_code)
                client.disconnect()
            return
        self._connected.set()
        self.metrics.inc("mqtt_connects_total", source=self.name)
        self.metrics.set("source_connected", 1, source=self.name)
        subs = [(f, self.options.qos) for f in self._filters()]
        client.subscribe(subs)
        log.info("mqtt source %s connected (session present: %s), subscribed to %s",
                 self.name, getattr(flags, "session_present", None), [s for s, _ in subs])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connected.is_set():
            self.metrics.inc("mqtt_reconnects_total", source=self.name)
            log.warning("mqtt source %s disconnected (%s); reconnecting", self.name, reason_code)
        self._connected.clear()
        self.metrics.set("source_connected", 0, source=self.name)
        if self._auth_failed:
            client.loop_stop()

    def _shape_for(self, topic: str) -> str:
        for pattern, shape in self._shapes:
            if topic_matches(pattern, topic):
                return shape
        return "auto"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.metrics.inc("uplinks_received_total", source=self.name)
        if len(msg.payload) > self.options.max_payload_bytes:
            self.metrics.inc("uplinks_rejected_total", source=self.name, reason="too_large")
            return
        try:
            uplink = parse_uplink(msg.topic, msg.payload, self._shape_for(msg.topic))
        except UplinkShapeError as exc:
            self.metrics.inc("uplinks_rejected_total", source=self.name, reason=exc.reason)
            log.debug("mqtt source %s rejected a message on %s: %s", self.name, msg.topic, exc)
            return
        uplink.source = self.name
        if self._emit is not None:
            self._emit(uplink)
            if self._commit_each is not None:
                self._commit_each()

    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def auth_failed(self) -> bool:
        return self._auth_failed

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self.metrics.set("source_connected", 0, source=self.name)

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (for start-up readiness and tests)."""
        return self._connected.wait(timeout)


def _factory(name: str, options: MqttSourceOptions, context: PluginContext) -> Any:
    if options.receive_process:
        from plugins.sources.mqtt.process import ProcessMqttSource  # the child imports this module

        return ProcessMqttSource(name, options, context)
    return MqttSource(name, options, context)


@hookimpl
def lora_gateway_register_sources(register: Any) -> None:
    register("mqtt", _factory, MqttSourceOptions)




@hookimpl
def lora_gateway_message_shapes() -> list[str]:
    return list(SHAPES)


@hookimpl
def lora_gateway_parse_message(topic: str | None, body: bytes, shape: str) -> RawUplink | None:
    """``decode FILE``: a message file parsed exactly as the source parses a received one."""
    if shape not in SHAPES:
        return None
    return parse_uplink(topic, body, shape)

"""The broker connection every MQTT user of the gateway shares: the ``mqtt`` and
``homeassistant`` alert handlers and the model command topic (``gateway.control``).

paho-mqtt 2.x (CallbackAPIVersion.VERSION2) with its own network thread (``loop_start``)
and capped reconnect back-off (``reconnect_delay_set``). On every connect it re-subscribes
what ``subscribe_on_connect`` registered and runs the owner's on-connect hooks (re-publish
discovery, end a delivery back-off). With a ``status_topic`` it also publishes the retained
birth message ``online`` there, and its last will marks the gateway ``offline`` when the
connection dies without a DISCONNECT (crash, power cut, network loss); a clean ``stop``
publishes ``offline`` itself, since the broker does not send the will then.

Metrics: ``mqtt_connected{<label>=<name>}`` (1/0) and ``mqtt_connect_failures_total``, where
``label`` is ``handler`` for alert handlers (the owner picks it).

When the broker refuses the credentials (CONNACK 4/5 in 3.1.1, 134/135 in v5) the
connection stops retrying and says so once: retrying cannot fix a wrong password.

Callbacks run on paho's thread and only set state or queue publishes: nothing blocks there.
Passwords come from ``password_env`` / ``password_file`` and are never logged.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable

from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.contracts import DeliveryError
from gateway.metrics import Metrics
from gateway.broker.options import AUTH_FAILURE_CODES, BrokerOptions, make_client, tls_context

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def topic_part(text: str) -> str:
    """One safe topic level: MQTT wildcards, separators and odd characters become ``_``."""
    return _UNSAFE.sub("_", text) or "_"


class MqttConnection:
    """One paho client with birth/last-will on ``status_topic`` and acknowledged publishes."""

    def __init__(self, name: str, broker: BrokerOptions, client_id: str, status_topic: str | None,
                 metrics: Metrics, *, metric_label: str = "handler", max_queued: int = MAX_QUEUED_MESSAGES) -> None:
        self.name = name
        self.broker = broker
        self.client_id = broker.client_id or client_id
        self.status_topic = status_topic
        self.metrics = metrics
        self._labels = {metric_label: name}
        self._max_queued = max_queued
        self.on_connect_hooks: list[Callable[[], None]] = []
        self.on_disconnect_hooks: list[Callable[[], None]] = []
        self.on_message_hooks: list[Callable[[mqtt.MQTTMessage], None]] = []
        self._subscriptions: list[tuple[str, int, bool]] = []
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._auth_failed: str | None = None
        self._lock = threading.Lock()

    @property
    def v5(self) -> bool:
        return self.broker.protocol == "5"

    def start(self) -> None:
        """Create the client and connect in the background; returns at once.

        Raises ValueError for unusable settings (e.g. ``password_env`` names an unset variable).
        """
        with self._lock:
            if self._client is not None:
                return
            client = make_client(self.broker.model_copy(update={"tls": None}), self.client_id,
                                 persistent=False)
            if self.broker.tls is not None:
                # paho derives its own host name handling from the context's check_hostname.
                client.tls_set_context(tls_context(self.broker.tls))
            if self.status_topic is not None:
                client.will_set(self.status_topic, "offline", qos=1, retain=True)
            # Bounded: unacknowledged QoS>0 messages paho keeps for re-sending after a reconnect.
            client.max_queued_messages_set(self._max_queued)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
            client.loop_start()
            self._client = client

    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for the connection (tests, start-up checks)."""
        return self._connected.wait(timeout)

    @property
    def auth_failed(self) -> str | None:
        """The broker's refusal reason when it rejected the credentials, else None."""
        return self._auth_failed

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: object, properties: object) -> None:
        code = int(getattr(reason_code, "value", reason_code))  # type: ignore[call-overload]
        if code != 0:
            self.metrics.inc("mqtt_connect_failures_total", reason=str(reason_code), **self._labels)
            if code in AUTH_FAILURE_CODES:
                self._auth_failed = str(reason_code)
                log.error("%s: broker %s:%d refused the credentials (%s); not retrying - fix the "
                          "username/password and restart", self.name, self.broker.host, self.broker.port,
                          reason_code)
                client.disconnect()  # ends paho's reconnect loop
            else:
                log.warning("%s: broker refused the connection (%s); retrying", self.name, reason_code)
            return
        self._connected.set()
        self.metrics.set("mqtt_connected", 1, **self._labels)
        log.info("%s: connected to %s:%d", self.name, self.broker.host, self.broker.port)
        if self.status_topic is not None:
            client.publish(self.status_topic, "online", qos=1, retain=True)
        for topic, qos, retain_as_published in list(self._subscriptions):
            if self.v5:
                client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=retain_as_published))
            else:
                client.subscribe(topic, qos=qos)
        for hook in list(self.on_connect_hooks):
            try:
                hook()
            except Exception:  # noqa: BLE001 - one hook must not stop the others; logged
                log.exception("%s: on-connect hook failed", self.name)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: object, properties: object) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self.metrics.set("mqtt_connected", 0, **self._labels)
        if was:
            log.warning("%s: disconnected from broker (%s); reconnecting with back-off", self.name, reason_code)
        for hook in list(self.on_disconnect_hooks):
            try:
                hook()
            except Exception:  # noqa: BLE001 - one hook must not stop the others; logged
                log.exception("%s: on-disconnect hook failed", self.name)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        for hook in list(self.on_message_hooks):
            try:
                hook(message)
            except Exception:  # noqa: BLE001 - a bad message must not kill paho's thread; logged
                log.exception("%s: message hook failed for %s", self.name, message.topic)

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False,
                timeout: float = 10.0, user_properties: dict[str, str] | None = None) -> None:
        """Publish and, for QoS > 0, wait for the broker's acknowledgement.

        Raises DeliveryError when not connected, when the credentials were refused, or when
        no PUBACK arrives within ``timeout`` seconds (paho may still deliver it later: a
        duplicate the receiver drops by idempotency key).
        """
        info = self.enqueue(topic, payload, qos=qos, retain=retain, user_properties=user_properties)
        if qos > 0:
            self.wait_published(info, topic, timeout)

    def enqueue(self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False,
                user_properties: dict[str, str] | None = None) -> Any:
        """``publish``'s first half: hand the message to paho (messages leave in the order
        they were enqueued) and return paho's message info for ``wait_published``.
        DeliveryError when not connected or the credentials were refused."""
        client = self._client
        if self._auth_failed:
            raise DeliveryError(f"broker refused the credentials ({self._auth_failed})")
        if client is None or not self._connected.is_set():
            raise DeliveryError(f"not connected to broker {self.broker.host}:{self.broker.port}")
        props = None
        if user_properties and self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = list(user_properties.items())
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise DeliveryError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    def wait_published(self, info: Any, topic: str, timeout: float) -> None:
        """``publish``'s second half: wait for the broker's acknowledgement of a QoS > 0 message."""
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise DeliveryError(f"publish to {topic} failed: {exc}") from exc
        if not info.is_published():
            raise DeliveryError(f"no acknowledgement from the broker for {topic} within {timeout:g} s")

    def publish_nowait(self, topic: str, payload: str | bytes, *, qos: int = 0, retain: bool = False) -> bool:
        """Best-effort publish (telemetry, discovery): True when handed to paho while connected."""
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        return client.publish(topic, payload, qos=qos, retain=retain).rc == mqtt.MQTT_ERR_SUCCESS

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (call from an on-connect hook so it survives reconnects)."""
        if self._client is not None:
            self._client.subscribe(topic, qos=qos)

    def subscribe_on_connect(self, topic: str, qos: int = 1, *, retain_as_published: bool = False) -> None:
        """Subscribe on every connect, before the on-connect hooks run (register before ``start``).
        ``retain_as_published`` (MQTT v5) keeps the retain flag on live deliveries too."""
        self._subscriptions.append((topic, qos, retain_as_published))

    def publish_handle(self, topic: str, payload: str | bytes, *, qos: int = 1) -> mqtt.MQTTMessageInfo | None:
        """Hand a publish to paho without waiting: its MQTTMessageInfo, or None with no client."""
        client = self._client
        return None if client is None else client.publish(topic, payload, qos=qos)

    def stop(self, timeout: float = 2.0) -> None:
        """Publish ``offline`` (retained), disconnect and stop paho's thread; idempotent."""
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        if self._connected.is_set() and self.status_topic is not None:
            info = client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("%s: could not publish offline status: %s", self.name, exc)
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self.metrics.set("mqtt_connected", 0, **self._labels)

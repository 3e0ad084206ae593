"""``mqtt`` alert handler: alerts, retained device state and telemetry on an MQTT broker.

Topics under ``topic_prefix`` (default ``lora-gateway/<gateway_id>``):

- ``<prefix>/status``: retained ``online`` (birth, on every connect) / ``offline`` (last will,
  and on a clean stop), so a dashboard shows the gateway offline when it dies.
- ``<prefix>/<device_id>/alert``: one JSON message per alert event (QoS 1, not retained;
  MQTT v5 adds the idempotency key as user property ``key``).
- ``<prefix>/<device_id>/state``: retained JSON state of the device's alerts
  (see plugins.handlers.alert_state).
- ``<prefix>/<device_id>/telemetry``: readings, best-effort (``on_reading``), or with
  ``telemetry_durable`` through the outbox (``deliver_reading``), kept while the broker is down.

``deliver`` returns only after the broker acknowledged both the alert and the state
(PUBACK, ``ack_timeout_s``); otherwise it raises DeliveryError and the outbox retries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ConfigDict, Field

from gateway.broker.connection import MqttConnection, topic_part
from gateway.broker.options import BrokerOptions
from gateway.contracts import PluginContext
from gateway.hookspecs import hookimpl
from gateway.types import Alert, Reading
from plugins.handlers.alert_state import DeviceAlertStates

log = logging.getLogger(__name__)


class MqttHandlerOptions(BrokerOptions):
    """Options of the ``mqtt`` handler: the broker connection plus topics and QoS."""

    model_config = ConfigDict(extra="forbid")
    topic_prefix: str | None = Field(None, description="Topic prefix; default lora-gateway/<gateway_id>.")
    qos: Literal[1, 2] = Field(1, description="QoS of alert and state messages (acknowledged).")
    telemetry: bool = Field(True, description="Publish readings on <prefix>/<device_id>/telemetry.")
    telemetry_qos: Literal[0, 1] = Field(0, description="QoS of telemetry messages.")
    telemetry_durable: bool = Field(
        False, description="Send telemetry through the durable outbox instead of best-effort: readings "
        "taken while the broker is down are published when it returns (the oldest telemetry is "
        "evicted first when the outbox budget is reached; alerts never are). Costs one SQLite "
        "transaction per batch of readings and a delivery per reading; use telemetry_qos = 1 with it.")
    ack_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the broker's PUBACK "
                                                         "before the delivery counts as failed.")
    max_devices: int = Field(10000, ge=1, description="Devices whose alert state is kept for the "
                                                      "retained state topic.")


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


class MqttHandler:
    """Publishes alerts and state with acknowledged QoS; see the module docstring."""

    def __init__(self, name: str, options: MqttHandlerOptions, context: PluginContext) -> None:
        self.name = name
        self.options = options
        self.gateway_id = context.gateway_id
        self.metrics = context.metrics
        self.prefix = (options.topic_prefix or f"lora-gateway/{topic_part(context.gateway_id)}").rstrip("/")
        self.status_topic = f"{self.prefix}/status"
        self.conn = MqttConnection(name, options, f"{topic_part(context.gateway_id)}-{topic_part(name)}",
                                   self.status_topic, context.metrics)
        self.states = DeviceAlertStates(options.max_devices)

    def start(self) -> None:
        """Connect in the background (returns at once); ValueError for unusable settings."""
        self.conn.start()

    def device_topic(self, device_id: str, leaf: str) -> str:
        return f"{self.prefix}/{topic_part(device_id)}/{leaf}"

    def deliver(self, alert: Alert) -> None:
        """Publish the alert and the device's retained state; raise DeliveryError unless both
        were acknowledged."""
        o = self.options
        body = _json({**alert.as_dict(), "gateway_id": self.gateway_id})
        self.conn.publish(self.device_topic(alert.device_id, "alert"), body, qos=o.qos,
                          timeout=o.ack_timeout_s, user_properties={"key": alert.key})
        state = self.states.apply(alert)
        self.conn.publish(self.device_topic(alert.device_id, "state"), _json(state), qos=o.qos,
                          retain=True, timeout=o.ack_timeout_s)

    @property
    def durable_telemetry(self) -> bool:
        """True when readings should reach ``deliver_reading`` through the outbox
        (gateway.alerts.telemetry) instead of ``on_reading``."""
        return self.options.telemetry and self.options.telemetry_durable

    def on_reading(self, reading: Reading) -> None:
        """Best-effort telemetry: published when connected, else counted as dropped."""
        if not self.options.telemetry:
            return
        ok = self.conn.publish_nowait(self.device_topic(reading.device_id, "telemetry"),
                                      _json(reading.as_dict()), qos=self.options.telemetry_qos)
        if not ok:
            self.metrics.inc("telemetry_dropped_total", reason="mqtt_disconnected")

    def deliver_reading(self, reading: Reading) -> None:
        """Telemetry from the outbox: raises DeliveryError while disconnected so it stays queued."""
        self.conn.publish(self.device_topic(reading.device_id, "telemetry"),
                          _json(reading.as_dict()), qos=self.options.telemetry_qos,
                          timeout=self.options.ack_timeout_s)

    def add_reconnect_callback(self, callback: Callable[[], None]) -> None:
        """``ReconnectNotifier``: ``callback`` runs each time the broker connection comes up."""
        self.conn.on_connect_hooks.append(callback)

    def stop(self) -> None:
        """Publish offline, disconnect; idempotent."""
        self.conn.stop()


def make_mqtt_handler(name: str, options: MqttHandlerOptions, context: PluginContext) -> MqttHandler:
    return MqttHandler(name, options, context)


@hookimpl
def lora_gateway_register_alert_handlers(register: Callable[..., None]) -> None:
    register("mqtt", make_mqtt_handler, MqttHandlerOptions)

"""``homeassistant`` alert handler: Home Assistant MQTT discovery for devices, readings, alerts.

Uses the shared MqttConnection (gateway.broker.connection) and the same topics as
the ``mqtt`` handler, so both can run side by side:

- ``<prefix>/status``: gateway availability (retained birth ``online`` / last will ``offline``);
  every discovered entity names it as its ``availability_topic``.
- ``<prefix>/<device_id>/telemetry``: readings (JSON, ``values`` per channel), retained, so
  Home Assistant shows the last value as soon as it subscribes (checked against a real Home
  Assistant by ``bench/homeassistant_discovery.py``: without it every sensor stayed
  ``unknown`` until the reading after the one that announced it).
- ``<prefix>/<device_id>/state``: retained alert state (``state``: ``problem`` | ``ok``);
  ``ok`` is published with the alert sensor's announcement when the device has no alert
  yet, so the sensor is ``off`` rather than ``unknown``.

Discovery (retained, QoS 1) under ``<discovery_prefix>`` (default ``homeassistant``):

- ``sensor/<node>/<device>_<channel>/config`` on the first reading of each device channel;
- ``binary_sensor/<node>/<device>_alert/config`` per device (device class ``problem``);
- ``binary_sensor/<node>/gateway_status/config``: the gateway's own connectivity.

All known configs are published again on every (re)connect and whenever Home Assistant
announces itself on ``<discovery_prefix>/status`` = ``online``. The set of entities is
bounded (``max_entities``; beyond it new ones are counted in
``homeassistant_entities_dropped_total`` and not announced).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

from paho.mqtt import client as mqtt
from pydantic import ConfigDict, Field

from gateway.contracts import PluginContext
from gateway.hookspecs import hookimpl
from gateway.broker.options import BrokerOptions
from gateway.types import Alert, Reading
from plugins.handlers.alert_state import DeviceAlertStates
from gateway.broker.connection import MqttConnection, topic_part

log = logging.getLogger(__name__)

# Channel name -> (device_class, unit) for well-known sensor channels.
KNOWN_CHANNELS: dict[str, tuple[str | None, str | None]] = {
    "temperature": ("temperature", "°C"), "temp": ("temperature", "°C"),
    "humidity": ("humidity", "%"), "rh": ("humidity", "%"),
    "battery": ("battery", "%"), "battery_pct": ("battery", "%"),
    "battery_v": ("voltage", "V"), "bat_v": ("voltage", "V"),
    "pressure": ("atmospheric_pressure", "hPa"), "co2": ("carbon_dioxide", "ppm"),
    "illuminance": ("illuminance", "lx"), "soil_moisture": ("moisture", "%"),
}


class HomeAssistantOptions(BrokerOptions):
    """Options of the ``homeassistant`` handler: the broker connection plus discovery settings."""

    model_config = ConfigDict(extra="forbid")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's MQTT discovery prefix.")
    topic_prefix: str | None = Field(None, description="Prefix of state/telemetry/status topics; default "
                                                       "lora-gateway/<gateway_id> (as the mqtt handler).")
    node_id: str | None = Field(None, description="Discovery node id; default the gateway id.")
    publish_telemetry: bool = Field(True, description="Publish readings on <prefix>/<device>/telemetry; "
                                                      "turn off when the mqtt handler already does.")
    channel_units: dict[str, str] = Field(default_factory=dict, description="Unit per channel name, "
                                          "overriding the built-in guesses (e.g. {\"flow\": \"L/min\"}).")
    ack_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the broker's PUBACK of an "
                                                         "alert state before the delivery counts as failed.")
    max_entities: int = Field(5000, ge=1, description="Most discovered entities (sensors + alert sensors).")


class HomeAssistantHandler:
    """Announces entities by MQTT discovery and publishes their states."""

    def __init__(self, name: str, options: HomeAssistantOptions, context: PluginContext) -> None:
        self.name = name
        self.options = options
        self.metrics = context.metrics
        gw = topic_part(context.gateway_id)
        self.prefix = (options.topic_prefix or f"lora-gateway/{gw}").rstrip("/")
        self.node = topic_part(options.node_id or context.gateway_id)
        self.status_topic = f"{self.prefix}/status"
        self.conn = MqttConnection(name, options, f"{gw}-{topic_part(name)}", self.status_topic, context.metrics)
        self.conn.on_connect_hooks.append(self._on_connect)
        self.conn.on_message_hooks.append(self._on_message)
        self.states = DeviceAlertStates()
        self._configs: dict[str, str] = {}  # discovery topic -> config JSON
        self._lock = threading.Lock()
        # a device's state topic is written by on_reading (the first "ok") and deliver: each
        # decides and enqueues under this lock, so an "ok" never lands after a "problem"
        self._state_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background; discovery follows on connect."""
        self.conn.start()

    def add_reconnect_callback(self, callback: Callable[[], None]) -> None:
        """``ReconnectNotifier``: ``callback`` runs each time the broker connection comes up."""
        self.conn.on_connect_hooks.append(callback)

    def stop(self) -> None:
        self.conn.stop()

    def _on_connect(self) -> None:
        """paho thread: subscribe to HA's birth and re-announce everything (non-blocking)."""
        self.conn.subscribe(f"{self.options.discovery_prefix}/status")
        self._announce_gateway()
        self._publish_all_configs()

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        if message.topic == f"{self.options.discovery_prefix}/status" and message.payload == b"online":
            log.info("%s: Home Assistant came online; re-publishing discovery", self.name)
            self._publish_all_configs()

    def _publish_all_configs(self) -> None:
        with self._lock:
            configs = list(self._configs.items())
        for topic, body in configs:
            self.conn.publish_nowait(topic, body, qos=1, retain=True)

    # ------------------------------------------------------------------ discovery documents

    def _availability(self) -> dict[str, Any]:
        return {"availability_topic": self.status_topic, "payload_available": "online",
                "payload_not_available": "offline"}

    def _device(self, device_id: str, device_name: str | None) -> dict[str, Any]:
        return {"identifiers": [f"lora_{topic_part(device_id)}"], "name": device_name or device_id,
                "manufacturer": "LoRa sensor", "via_device": f"lora_gateway_{self.node}"}

    def _remember(self, topic: str, config: dict[str, Any]) -> str | None:
        """Store a new config; return its JSON when it must be published now (None: known or full)."""
        with self._lock:
            if topic in self._configs:
                return None
            if len(self._configs) >= self.options.max_entities:
                self.metrics.inc("homeassistant_entities_dropped_total", handler=self.name)
                return None
            body = json.dumps(config, separators=(",", ":"))
            self._configs[topic] = body
            return body

    def _announce_gateway(self) -> None:
        topic = f"{self.options.discovery_prefix}/binary_sensor/{self.node}/gateway_status/config"
        config = {"name": "Gateway status", "unique_id": f"lora_gateway_{self.node}_status",
                  "state_topic": self.status_topic, "payload_on": "online", "payload_off": "offline",
                  "device_class": "connectivity",
                  "device": {"identifiers": [f"lora_gateway_{self.node}"], "name": f"LoRa gateway {self.node}",
                             "manufacturer": "lora-edge-gateway"}}
        self._remember(topic, config)

    def sensor_config(self, device_id: str, channel: str, device_name: str | None) -> tuple[str, dict[str, Any]]:
        """Discovery topic and config of one device channel."""
        dev, ch = topic_part(device_id), topic_part(channel)
        device_class, unit = KNOWN_CHANNELS.get(channel.lower(), (None, None))
        unit = self.options.channel_units.get(channel, unit)
        key = json.dumps(channel)
        config: dict[str, Any] = {
            "name": channel, "unique_id": f"{self.node}_{dev}_{ch}",
            "state_topic": f"{self.prefix}/{dev}/telemetry",
            "value_template": f"{{{{ value_json['values'][{key}] if {key} in value_json['values'] "
                              f"else this.state }}}}",
            "state_class": "measurement", "device": self._device(device_id, device_name),
            **self._availability(),
        }
        if device_class:
            config["device_class"] = device_class
        if unit:
            config["unit_of_measurement"] = unit
        return f"{self.options.discovery_prefix}/sensor/{self.node}/{dev}_{ch}/config", config

    def alert_config(self, device_id: str, device_name: str | None) -> tuple[str, dict[str, Any]]:
        """Discovery topic and config of a device's alert binary sensor."""
        dev = topic_part(device_id)
        state_topic = f"{self.prefix}/{dev}/state"
        config = {"name": "Alert", "unique_id": f"{self.node}_{dev}_alert", "state_topic": state_topic,
                  "value_template": "{{ value_json.state }}", "payload_on": "problem", "payload_off": "ok",
                  "device_class": "problem", "json_attributes_topic": state_topic,
                  "json_attributes_template": "{{ value_json.alerts | tojson }}",
                  "device": self._device(device_id, device_name), **self._availability()}
        return f"{self.options.discovery_prefix}/binary_sensor/{self.node}/{dev}_alert/config", config

    # ------------------------------------------------------------------ handler contract

    def on_reading(self, reading: Reading) -> None:
        """Announce new channels and the device's alert sensor, then publish the reading.

        Best-effort and non-blocking; never raises. While disconnected nothing is sent, and
        every known config is re-published on the next connect.
        """
        for channel in reading.values:
            topic, config = self.sensor_config(reading.device_id, channel, reading.device_name)
            body = self._remember(topic, config)
            if body is not None:
                self.conn.publish_nowait(topic, body, qos=1, retain=True)
        topic, config = self.alert_config(reading.device_id, reading.device_name)
        body = self._remember(topic, config)
        if body is not None:
            self.conn.publish_nowait(topic, body, qos=1, retain=True)
            with self._state_lock:
                initial = self.states.initial(reading.device_id, reading.timestamp)
                if initial is not None:
                    self.conn.publish_nowait(f"{self.prefix}/{topic_part(reading.device_id)}/state",
                                             json.dumps(initial, separators=(",", ":")), qos=1, retain=True)
        if self.options.publish_telemetry:
            data = json.dumps(reading.as_dict(), separators=(",", ":"))
            if not self.conn.publish_nowait(f"{self.prefix}/{topic_part(reading.device_id)}/telemetry", data,
                                            retain=True):
                self.metrics.inc("telemetry_dropped_total", reason="mqtt_disconnected")

    def deliver(self, alert: Alert) -> None:
        """Publish the device's alert state (retained) and wait for the PUBACK; DeliveryError if not."""
        # The alert sensor is announced by the device's first reading here (on_reading), with
        # the device's name. An alert can come first (the policy decides before readings fan
        # out to handlers): then only the retained state goes out now, and Home Assistant
        # reads it when that announcement follows. Announcing here instead would make Home
        # Assistant create the entity under the device id (seen with 2024.3.3: entity id
        # binary_sensor.<dev_eui>_alert next to sensor.<name>_temperature).
        state_topic = f"{self.prefix}/{topic_part(alert.device_id)}/state"
        with self._state_lock:
            state = self.states.apply(alert)
            info = self.conn.enqueue(state_topic, json.dumps(state, separators=(",", ":"), default=str),
                                     qos=1, retain=True)
        self.conn.wait_published(info, state_topic, self.options.ack_timeout_s)


def make_homeassistant_handler(name: str, options: HomeAssistantOptions,
                               context: PluginContext) -> HomeAssistantHandler:
    return HomeAssistantHandler(name, options, context)


@hookimpl
def lora_gateway_register_alert_handlers(register: Callable[..., None]) -> None:
    register("homeassistant", make_homeassistant_handler, HomeAssistantOptions)

"""homeassistant alert handler against a real Mosquitto: discovery, states, availability."""

from __future__ import annotations

import json
import time

from paho.mqtt import client as mqtt

from conftest import Broker
from gateway.contracts import PluginContext
from gateway.metrics import Metrics
from gateway.types import Alert, Reading
from mqtt_probe import Probe
from plugins.handlers.homeassistant_handler import HomeAssistantHandler, HomeAssistantOptions

PREFIX = "lgw/ha"


def make(broker: Broker, metrics: Metrics | None = None, **opts: object) -> HomeAssistantHandler:
    base: dict[str, object] = {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX,
                               "reconnect_min_s": 1, "reconnect_max_s": 1, "ack_timeout_s": 5}
    base.update(opts)
    return HomeAssistantHandler("homeassistant", HomeAssistantOptions(**base),  # type: ignore[arg-type]
                                PluginContext(metrics=metrics or Metrics(), gateway_id="gw 1"))


def configs(probe: Probe) -> list[str]:
    with probe.cond:
        return [m.topic for m in probe.messages if m.topic.endswith("/config")]


def test_discovery_per_channel_states_and_availability(broker: Broker) -> None:
    probe = Probe(broker.host, broker.port, "#")
    h = make(broker, channel_units={"flow": "L/min"})
    try:
        h.start()
        assert h.conn.wait_connected(10)
        probe.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.text == "online")
        gw = json.loads(probe.wait_for(
            lambda m: m.topic == "homeassistant/binary_sensor/gw_1/gateway_status/config").payload)
        assert gw["state_topic"] == f"{PREFIX}/status" and gw["device_class"] == "connectivity"
        h.on_reading(Reading("a1b2", 10.0, {"temperature": 21.5, "flow": 3.0}, device_name="Pump 1"))
        temp = json.loads(probe.wait_for(
            lambda m: m.topic == "homeassistant/sensor/gw_1/a1b2_temperature/config").payload)
        assert temp["state_topic"] == f"{PREFIX}/a1b2/telemetry"
        assert temp["availability_topic"] == f"{PREFIX}/status"
        assert temp["payload_not_available"] == "offline"
        assert temp["device_class"] == "temperature" and temp["unit_of_measurement"] == "°C"
        assert temp["device"]["name"] == "Pump 1" and temp["unique_id"] == "gw_1_a1b2_temperature"
        assert "value_json['values'][\"temperature\"]" in temp["value_template"]
        flow = json.loads(probe.wait_for(lambda m: m.topic.endswith("/a1b2_flow/config")).payload)
        assert flow["unit_of_measurement"] == "L/min" and "device_class" not in flow
        alert_cfg = json.loads(probe.wait_for(
            lambda m: m.topic == "homeassistant/binary_sensor/gw_1/a1b2_alert/config").payload)
        assert alert_cfg["state_topic"] == f"{PREFIX}/a1b2/state" and alert_cfg["device_class"] == "problem"
        assert alert_cfg["device"]["identifiers"] == temp["device"]["identifiers"]  # one HA device
        tele_msg = probe.wait_for(lambda m: m.topic == f"{PREFIX}/a1b2/telemetry")
        tele = json.loads(tele_msg.payload)
        assert tele["values"]["temperature"] == 21.5
        # a device without alerts: its alert sensor starts "ok" (off), not unknown
        first = json.loads(probe.wait_for(lambda m: m.topic == f"{PREFIX}/a1b2/state").payload)
        assert first["state"] == "ok" and first["alerts"] == {}
        n = len(configs(probe))
        h.on_reading(Reading("a1b2", 20.0, {"temperature": 21.7, "flow": 3.1}))
        probe.wait_for(lambda m: m.topic == f"{PREFIX}/a1b2/telemetry" and json.loads(m.payload)["timestamp"] == 20.0)
        assert len(configs(probe)) == n  # channels already announced: no new configs
        h.deliver(Alert("a1b2", "anomaly", "raised", "critical", 30.0, "high", "k1"))
        state = json.loads(probe.wait_for(lambda m: m.topic == f"{PREFIX}/a1b2/state"
                                          and json.loads(m.payload)["state"] != "ok").payload)
        assert state["state"] == "problem" and state["alerts"]["anomaly"]["severity"] == "critical"
        # Home Assistant restarting announces itself: every config is published again.
        probe.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while len(configs(probe)) < 2 * n:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        h.stop()
    probe.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.text == "offline")
    probe.close()
    # Discovery configs and the alert state are retained for a Home Assistant starting later.
    late = Probe(broker.host, broker.port, "homeassistant/#")
    late2 = Probe(broker.host, broker.port, f"{PREFIX}/+/state")
    # the last reading too: Home Assistant subscribes to a sensor's state topic only after it
    # read the announcement, so without it every sensor stayed "unknown" until the next
    # reading (seen with Home Assistant 2024.3.3, bench/homeassistant_discovery.py)
    late3 = Probe(broker.host, broker.port, f"{PREFIX}/+/telemetry")
    try:
        cfg = late.wait_for(lambda m: m.topic.endswith("/a1b2_alert/config"))
        assert cfg.retain and json.loads(cfg.payload)["payload_on"] == "problem"
        st = late2.wait_for(lambda m: True)
        assert st.retain and json.loads(st.payload)["state"] == "problem"
        tele = late3.wait_for(lambda m: True)
        assert tele.retain and json.loads(tele.payload)["timestamp"] == 20.0
    finally:
        late.close()
        late2.close()
        late3.close()


def test_discovery_republished_after_broker_restart(broker: Broker) -> None:
    h = make(broker)
    try:
        h.start()
        assert h.conn.wait_connected(10)
        h.on_reading(Reading("dev9", 1.0, {"humidity": 40.0}))
        broker.stop()
        # Wipe the broker's retained store so only a re-publish can bring the config back.
        for f in broker.workdir.glob("*.db"):
            f.unlink()
        broker.start()
        probe = Probe(broker.host, broker.port, "homeassistant/sensor/#", protocol=mqtt.MQTTv311)
        try:
            cfg = probe.wait_for(lambda m: m.topic.endswith("/dev9_humidity/config"), timeout=15)
            assert json.loads(cfg.payload)["device_class"] == "humidity"
        finally:
            probe.close()
    finally:
        h.stop()


def test_entity_bound_is_counted(broker: Broker) -> None:
    m = Metrics()
    h = make(broker, m, max_entities=3)
    try:
        h.start()
        assert h.conn.wait_connected(10)
        h.on_reading(Reading("d", 1.0, {"a": 1.0, "b": 2.0, "c": 3.0}))
        assert m.get("homeassistant_entities_dropped_total") >= 1
    finally:
        h.stop()


def test_an_alert_before_the_first_reading_keeps_the_device_name(broker: Broker) -> None:
    """The policy raises a rule alert (battery_low) before the reading fans out to handlers:
    the alert sensor is still announced by the reading, with the device's name (Home
    Assistant names the entity id after the first announcement it sees)."""
    probe = Probe(broker.host, broker.port, "#")
    h = make(broker)
    try:
        h.start()
        assert h.conn.wait_connected(10)
        h.deliver(Alert("c3d4", "battery_low", "raised", "warning", 5.0, "battery low", "k9"))
        state = probe.wait_for(lambda m: m.topic == f"{PREFIX}/c3d4/state")
        assert json.loads(state.payload)["state"] == "problem"
        h.on_reading(Reading("c3d4", 6.0, {"temperature": 3.0}, device_name="Cold room"))
        probe.wait_for(lambda m: m.topic.endswith("/c3d4_alert/config"))
        probe.wait_for(lambda m: m.topic == f"{PREFIX}/c3d4/telemetry")  # published after it: all are in
        announced = [json.loads(m.payload) for m in probe.messages if m.topic.endswith("/c3d4_alert/config")]
        assert [a["device"]["name"] for a in announced] == ["Cold room"]
        # and the problem state is not overwritten by a first "ok"
        assert [json.loads(m.payload)["state"] for m in probe.messages if m.topic == f"{PREFIX}/c3d4/state"] == ["problem"]
    finally:
        h.stop()
        probe.close()

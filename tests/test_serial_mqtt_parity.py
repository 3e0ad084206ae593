"""Readings from serial and from MQTT go through the same decode step and agree.

The same seeded virtual nodes are sent once over a pty (bridge frames, read by the
``serial`` source) and once as ChirpStack v4 uplinks over a real Mosquitto (read by the
``mqtt`` source); both are decoded by the gateway's decoder plugins, and every reading
(node, sequence) has the same values on both paths.
"""

from __future__ import annotations

import threading
import time

from firmware_bridge.mqtt_sim import MqttSimulator
from firmware_bridge.simulator import PtySimulator
from gateway.contracts import PluginContext
from gateway.ingest.decoding import decode_uplink
from gateway.metrics import Metrics
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.types import RawUplink

T0 = 1_760_000_000.0


def test_serial_and_mqtt_readings_of_the_same_nodes_decode_identically(broker) -> None:
    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    serial_got: list[RawUplink] = []
    mqtt_got: list[RawUplink] = []
    lock = threading.Lock()

    def collect(into: list[RawUplink]):
        def emit(uplink: RawUplink) -> None:
            with lock:
                into.append(uplink)
        return emit

    mqtt_factory, mqtt_model = registry.sources["mqtt"]
    mqtt_source = mqtt_factory("lns", mqtt_model.model_validate({"host": broker.host, "port": broker.port}),
                               PluginContext(metrics=Metrics()))
    mqtt_source.start(collect(mqtt_got))
    try:
        deadline = time.monotonic() + 10
        while not mqtt_source.connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # subscriptions are made in on_connect
        MqttSimulator(broker.host, broker.port, nodes=3, time_scale=6000, seed=5,
                      start_time=T0).run(max_messages=30)
        serial_factory, serial_model = registry.sources["serial"]
        with PtySimulator("bridge", nodes=3, time_scale=6000, seed=5, start_time=T0, max_messages=30) as sim:
            source = serial_factory("radio", serial_model.model_validate({"port": sim.path, "protocol": "bridge"}),
                                    PluginContext(metrics=Metrics(), extra={"clock": sim.clock}))
            source.start(collect(serial_got))
            try:
                deadline = time.monotonic() + 10
                while (len(serial_got) < 30 or len(mqtt_got) < 30) and time.monotonic() < deadline:
                    time.sleep(0.02)
            finally:
                source.stop()
    finally:
        mqtt_source.stop()
    assert len(serial_got) == 30 and len(mqtt_got) == 30
    by_node_mqtt: dict[int, list] = {}
    for up in mqtt_got:
        reading, _ = decode_uplink(pm, up, None)
        by_node_mqtt.setdefault(int(up.device_id[-4:], 16), []).append(reading.values)
    by_node_serial: dict[int, list] = {}
    for up in serial_got:
        reading, _ = decode_uplink(pm, up, None)
        by_node_serial.setdefault(int(up.device_id), []).append(reading.values)
    assert by_node_serial == by_node_mqtt
    assert set(by_node_serial) == {1, 2, 3}
    assert {"temperature_1", "humidity_2", "analog_input_3", "voltage_4"} <= set(by_node_serial[1][0])

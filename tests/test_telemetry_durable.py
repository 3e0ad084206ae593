"""Telemetry through the durable outbox (``telemetry_durable``) against a real Mosquitto:
readings taken while the broker is down are published, in order, once it is back; the
best-effort path counts its drops instead."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import Broker
from mqtt_probe import Probe
from paho.mqtt import client as mqtt

from gateway.alerts.dispatcher import Dispatcher
from gateway.alerts.outbox import Outbox
from gateway.alerts.telemetry import TelemetryFanout
from gateway.contracts import PluginContext
from gateway.metrics import Metrics
from gateway.types import Reading
from plugins.handlers.mqtt_handler import MqttHandler, MqttHandlerOptions

PREFIX = "lgw/tele"


def handler(broker: Broker, metrics: Metrics, **opts: object) -> MqttHandler:
    base: dict[str, object] = {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX,
                               "reconnect_min_s": 0.2, "reconnect_max_s": 0.5, "ack_timeout_s": 5,
                               "telemetry_qos": 1}
    base.update(opts)
    return MqttHandler("mqtt", MqttHandlerOptions(**base), PluginContext(metrics=metrics, gateway_id="gw"))  # type: ignore[arg-type]


def wait_until(cond, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_readings_during_broker_outage_are_published_after_it(broker: Broker, tmp_path: Path) -> None:
    metrics = Metrics()
    h = handler(broker, metrics, telemetry_durable=True)
    assert h.durable_telemetry
    # a persistent subscriber session (kept by the broker across its restart), so nothing the
    # gateway publishes before the probe has reconnected is missed
    probe = Probe(broker.host, broker.port, f"{PREFIX}/node-1/telemetry", client_id="tele-probe",
                  clean=False, protocol=mqtt.MQTTv311)
    broker.stop()
    h.start()
    outbox = Outbox(tmp_path / "outbox.sqlite", [h.name], 1 << 22, metrics, base_backoff_s=0.1, max_backoff_s=0.5)
    dispatcher = Dispatcher(outbox, [h], metrics)
    fanout = TelemetryFanout([h], metrics, outbox=outbox)
    assert fanout.durable_names == ("mqtt",) and fanout.handlers == []
    dispatcher.start()
    fanout.start()
    try:
        for i in range(50):
            fanout.put(Reading("node-1", 1000.0 + i, {"temperature": 20.0 + i / 10}))
        wait_until(lambda: outbox.pending("mqtt") == 50)  # all on disk while the broker is down
        assert metrics.get("telemetry_dropped_total", reason="mqtt_disconnected") == 0
        broker.start()
        wait_until(lambda: len(probe.messages) >= 50, timeout=30)
        times = [json.loads(m.payload)["timestamp"] for m in probe.messages]
        assert times[:50] == [1000.0 + i for i in range(50)]
        wait_until(lambda: outbox.pending("mqtt") == 0)
        assert metrics.get("telemetry_delivered_total", handler="mqtt") == 50
    finally:
        probe.close()
        fanout.stop()
        dispatcher.stop(1)
        h.stop()
        outbox.close()


def test_best_effort_telemetry_counts_drops_and_skips_the_outbox(broker: Broker, tmp_path: Path) -> None:
    metrics = Metrics()
    h = handler(broker, metrics)  # telemetry_durable defaults to False
    assert not h.durable_telemetry
    broker.stop()
    h.start()
    outbox = Outbox(tmp_path / "outbox.sqlite", [h.name], 1 << 22, metrics)
    fanout = TelemetryFanout([h], metrics, outbox=outbox)
    assert fanout.durable_names == () and fanout.handlers == [h]
    fanout.start()
    try:
        for i in range(20):
            fanout.put(Reading("node-1", 1000.0 + i, {"temperature": 20.0}))
        wait_until(lambda: metrics.get("telemetry_dropped_total", reason="mqtt_disconnected") == 20)
        assert outbox.pending("mqtt") == 0
    finally:
        fanout.stop()
        h.stop()
        outbox.close()


def test_outbox_refusal_of_a_telemetry_batch_is_counted_per_reading(tmp_path: Path) -> None:
    metrics = Metrics()
    with Outbox(tmp_path / "o.sqlite", ["mqtt"], 300, metrics) as outbox:  # 7 readings need ~1.2 KB: the batch cannot fit
        assert outbox.append_telemetry_many([Reading("d", float(i), {"t": 1.0}) for i in range(7)]) == []
        assert metrics.get("outbox_dropped_total", reason="telemetry_refused_budget") == 7

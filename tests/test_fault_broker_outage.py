"""Fault: the alert broker is stopped for 60 s under load, then restarted on the same port.

Two real Mosquitto brokers: the network server's (uplinks in, stays up) and the dashboard's
(alerts out, stopped). While the dashboard broker is down the gateway keeps receiving
uplinks and raises alerts (a sustained fault on one device, plus its clear); the file
handler writes them at once, the MQTT handler fails and the outbox keeps them. After the
restart every alert in the file must reach a persistent-session subscriber, matched by
idempotency key, and a key seen twice must carry the replay mark on the repeat.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from paho.mqtt import client as mqtt

from tests.conftest import Broker
from tests.test_e2e_mqtt import make_gateway, wait_for
from tests.uplink_factory import Fault, dev_eui, field_uplinks, publish_all

OUTAGE_S = 60.0


class Subscriber:
    """A dashboard with a persistent session (QoS 1) that reconnects on its own."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="ops-dashboard", clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("site/alerts/+/alert", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(json.loads(msg.payload))

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def file_alerts(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_alerts_raised_while_the_broker_is_down_are_all_delivered_after_it_returns(broker, tmp_path: Path) -> None:
    alert_broker = Broker(tmp_path / "alert-broker")
    alert_broker.start()
    sub = Subscriber(alert_broker)
    gw = make_gateway(broker, tmp_path, {"handlers": [
        {"type": "file", "path": str(tmp_path / "alerts.jsonl")},
        {"type": "mqtt", "host": alert_broker.host, "port": alert_broker.port, "topic_prefix": "site/alerts",
         "telemetry": False, "ack_timeout_s": 2.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
    ]})
    gw.start()
    try:
        faulty, calm = 2, 480
        uplinks = field_uplinks(devices=4, readings=800, fault=Fault(device=faulty, start=560, end=660, shift=14.0))
        publish_all(broker.host, broker.port, uplinks[: calm * 4])
        assert wait_for(lambda: gw.metrics.get("readings_total") == calm * 4, 60), gw.metrics.snapshot()
        before = {a["key"] for a in file_alerts(tmp_path / "alerts.jsonl")}

        alert_broker.stop()
        down_at = time.monotonic()
        assert wait_for(lambda: gw.metrics.get("mqtt_connected", handler="mqtt") == 0, 10)
        # under load: the rest of the uplinks arrive in chunks across the outage
        rest = uplinks[calm * 4:]
        chunks = [rest[i:i + 160] for i in range(0, len(rest), 160)]
        for chunk in chunks:
            publish_all(broker.host, broker.port, chunk)
            time.sleep((OUTAGE_S - 10) / len(chunks))  # pacing of the load, not synchronisation
        assert wait_for(lambda: gw.metrics.get("readings_total") == len(uplinks), 30), gw.metrics.snapshot()
        during = [a for a in file_alerts(tmp_path / "alerts.jsonl") if a["key"] not in before]
        anomaly = [a for a in during if a["kind"] == "anomaly" and a["device_id"] == dev_eui(faulty)]
        assert {a["state"] for a in anomaly} == {"raised", "cleared"}, during
        assert gw.outbox is not None and gw.outbox.pending("mqtt") >= len(during) > 0
        assert gw.metrics.get("delivery_failures_total", handler="mqtt") >= 1
        assert not [m for m in sub.received() if m["key"] in {a["key"] for a in during}]
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))  # the outage lasts 60 s

        alert_broker.start()  # same port, same persistence directory
        up_at = time.monotonic()
        expected = {a["key"] for a in file_alerts(tmp_path / "alerts.jsonl")}
        assert wait_for(lambda: expected <= {m["key"] for m in sub.received()}, 30), (
            expected - {m["key"] for m in sub.received()}, gw.outbox.stats(), gw.metrics.snapshot())
        caught_up_s = time.monotonic() - up_at
        assert wait_for(lambda: gw.outbox.pending("mqtt") == 0, 10)

        received = sub.received()
        by_key: dict[str, list[dict]] = {}
        for m in received:
            by_key.setdefault(m["key"], []).append(m)
        for key, copies in by_key.items():
            assert all(c["replay"] for c in copies[1:]), (key, copies)  # a repeat is marked
        # what waited out the outage arrives marked as a replay, with its idempotency key
        assert all(by_key[a["key"]][0]["replay"] for a in during)
        assert gw.metrics.get("alerts_replayed_total", handler="mqtt") >= len(during)
        assert gw.metrics.get("alerts_delivered_total", handler="file") == len(expected)
        print(f"outage {OUTAGE_S:.0f} s, {len(during)} alerts raised meanwhile, all delivered "
              f"{caught_up_s:.2f} s after the broker returned")
    finally:
        gw.stop()
        sub.close()
        alert_broker.stop()

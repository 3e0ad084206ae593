"""End to end over a real Mosquitto: ChirpStack v4 uplinks in, the bundled model, alerts out.

Four devices report; one develops a sustained temperature fault and recovers. The gateway
must raise an anomaly alert for that device only, a subscriber must receive it on the
alert topic, the JSON-lines file must hold it, and it must clear after the recovery.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from paho.mqtt import client as mqtt

from gateway.config import validate_config
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.service import Gateway
from tests.uplink_factory import Fault, dev_eui, field_uplinks, publish_all


def make_gateway(broker, tmp_path: Path, extra: dict | None = None) -> Gateway:
    data = {
        "gateway": {"id": "gw-test", "state_dir": str(tmp_path / "state")},
        "sources": [{"type": "mqtt", "name": "chirpstack", "host": broker.host, "port": broker.port,
                     "client_id": "gw-test-src"}],
        "handlers": [
            {"type": "file", "path": str(tmp_path / "alerts.jsonl")},
            {"type": "mqtt", "host": broker.host, "port": broker.port, "topic_prefix": "site/alerts", "telemetry": False},
        ],
        "profiles": [{"name": "lpp-nodes", "match_name": "node-*", "codec": "cayenne_lpp", "battery_field": "voltage_3"}],
        "model": {"calibration_steps": 160, "calibration_windows": 160},
        "batcher": {"max_batch": 64, "max_delay_ms": 5},
        # calibration here is 4x shorter than the bundled default, so its thresholds are noisier
        "alerts": {"raise_threshold": 1.5, "clear_threshold": 0.8},
        "metrics": {"listen": None},
    }
    data.update(extra or {})
    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    return Gateway(validate_config(data, registry), pm, registry)


def wait_for(predicate, timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_fault_raises_and_clears_for_that_device_only(broker, tmp_path: Path) -> None:
    received: list[dict] = []
    lock = threading.Lock()
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="dashboard")
    sub.on_message = lambda c, u, m: (lock.acquire(), received.append({"topic": m.topic, **json.loads(m.payload)}), lock.release()) if m.topic.endswith("/alert") else None
    sub.connect(broker.host, broker.port)
    sub.subscribe("site/alerts/#", qos=1)
    sub.loop_start()
    gw = make_gateway(broker, tmp_path)
    gw.start()
    try:
        faulty = 2
        uplinks = field_uplinks(devices=4, readings=800, fault=Fault(device=faulty, start=520, end=620, shift=14.0))
        publish_all(broker.host, broker.port, uplinks)
        assert wait_for(lambda: gw.metrics.get("readings_total") >= len(uplinks), 60), gw.metrics.snapshot()
        assert wait_for(lambda: gw.pipeline is not None and gw.pipeline.idle.is_set(), 30)
        lines = lambda: [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()] if (tmp_path / "alerts.jsonl").exists() else []
        anomaly = lambda: [a for a in lines() if a["kind"] == "anomaly"]
        assert wait_for(lambda: any(a["state"] == "cleared" for a in anomaly()), 20), (lines(), gw.metrics.snapshot())
        devices = {a["device_id"] for a in anomaly()}
        assert devices == {dev_eui(faulty)}, anomaly()
        states = [a["state"] for a in anomaly()]
        assert states[0] == "raised" and "cleared" in states
        raised = next(a for a in anomaly() if a["state"] == "raised")
        assert raised["details"]["channel"] == "temperature_1"
        assert wait_for(lambda: any(m["key"] == raised["key"] for m in received), 10), received
        assert gw.metrics.get("uplinks_quarantined_total") == 0
    finally:
        gw.stop()
        sub.disconnect()
        sub.loop_stop()

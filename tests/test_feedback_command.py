"""Operators' verdicts over the MQTT command topic against a real Mosquitto (issue 11, point 4).

A real in-process gateway with ``[commands]`` on raises an anomaly alert on seeded uplinks
and keeps the readings around it; a verdict published on
``<prefix>/command/alert/feedback`` is stored with those readings and answered on
``<prefix>/command/alert/result``; the clear's key finds the same episode; malformed
verdicts (bad key, bad label, retained, ...) are answered and counted, never stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt import client as mqtt

from gateway.alerts.feedback import load_feedback
from gateway.config import validate_config
from gateway.control.feedback_command import FeedbackRejected, parse_feedback
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.service import Gateway
from gateway.types import Alert
from models.feedback_labels import labelled_windows
from plugins.sources.mqtt.shapes import parse_uplink
from tests.mqtt_probe import Probe
from tests.uplink_factory import Fault, dev_eui, field_uplinks

PREFIX = "lora-gateway/gw-fb/command/alert"


@pytest.mark.parametrize(("payload", "retained", "reason"), [
    (b"x" * 5000, False, "too_large"),
    (b"\xff\xfe", False, "not_json"),
    (b"[1]", False, "not_object"),
    (b'{"key": "k1", "label": "false", "extra": 1}', False, "unknown_key"),
    (b'{"key": "../etc", "label": "false"}', False, "bad_key"),
    (b'{"key": "", "label": "false"}', False, "bad_key"),
    (b'{"label": "false"}', False, "bad_key"),
    (b'{"key": "k1", "label": "maybe"}', False, "bad_label"),
    (b'{"key": "k1"}', False, "bad_label"),
    (b'{"key": "k1", "label": "false", "note": 5}', False, "bad_note"),
    (b'{"key": "k1", "label": "false", "request_id": [1]}', False, "bad_request_id"),
    (b'{"key": "k1", "label": "false"}', True, "retained"),
])
def test_malformed_verdicts_are_rejected_with_a_reason(payload: bytes, retained: bool, reason: str) -> None:
    with pytest.raises(FeedbackRejected) as info:
        parse_feedback(payload, retained=retained)
    assert info.value.reason == reason


def test_verdict_parses() -> None:
    cmd = parse_feedback(b'{"key": "abc", "label": "FALSE", "note": "valve test", "request_id": 7}')
    assert (cmd.key, cmd.label, cmd.note, cmd.request_id) == ("abc", "false_alarm", "valve test", "7")


@pytest.fixture
def gateway(broker: Any, tmp_path: Path) -> Iterator[tuple[Gateway, list[Alert]]]:
    """A gateway with the command topic on and an anomaly raised and cleared on device 0."""
    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    config = validate_config({
        "gateway": {"id": "gw-fb", "state_dir": str(tmp_path / "state")},
        "profiles": [{"name": "lpp", "match_name": "node-*", "codec": "cayenne_lpp", "battery_field": "voltage_3"}],
        "model": {"calibration_steps": 160, "calibration_windows": 160},
        "commands": {"enabled": True, "host": broker.host, "port": broker.port, "client_id": "gw-fb-cmd",
                     "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "feedback": {"after_rows": 8},
        "metrics": {"listen": None},
    }, registry)
    alerts: list[Alert] = []
    gw = Gateway(config, pm, registry, on_alert=alerts.append)
    gw.start()
    pipeline = gw.pipeline
    assert pipeline is not None
    pipeline.stop()
    try:
        for topic, body in field_uplinks(devices=2, readings=420, fault=Fault(0, 300, 340, 8.0), seed=5):
            pipeline._handle(parse_uplink(topic, json.dumps(body).encode(), "chirpstack_v4"))
            pipeline._flush()
        deadline = time.monotonic() + 10
        while gw.metrics.get("alert_windows_written_total") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the writer thread: preliminary, complete, alias
        deadline = time.monotonic() + 10
        while gw.metrics.get("model_commands_connected") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield gw, alerts
    finally:
        gw.stop()


def _publish(broker: Any, body: dict[str, Any] | bytes, retain: bool = False) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        client.publish(f"{PREFIX}/feedback", payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _reply(probe: Probe, request_id: str) -> dict[str, Any]:
    msg = probe.wait_for(lambda m: json.loads(m.payload).get("request_id") == request_id, 20)
    out: dict[str, Any] = json.loads(msg.payload)
    return out


def test_verdicts_over_the_command_topic(broker: Any, gateway: tuple[Gateway, list[Alert]]) -> None:
    gw, alerts = gateway
    assert gw.metrics.get("model_commands_connected") == 1
    anomalies = [a for a in alerts if a.kind == "anomaly" and a.device_id == dev_eui(0)]
    raised = next(a for a in anomalies if a.state == "raised")
    cleared = next(a for a in anomalies if a.state == "cleared")
    state_dir = gw.config.gateway.state_dir
    probe = Probe(broker.host, broker.port, f"{PREFIX}/result")
    try:
        # the raise's key: stored with the readings the daemon kept (32-row window + what followed)
        _publish(broker, {"key": raised.key, "label": "confirmed", "note": "compressor", "request_id": "r1"})
        reply = _reply(probe, "r1")
        assert reply["ok"] and reply["reason"] == "stored" and reply["label"] == "confirmed", reply
        assert reply["known"] and reply["window_rows"] > 32 and reply["command"] == "feedback"
        stored = load_feedback(state_dir)[raised.key]
        assert stored["note"] == "compressor" and stored["device_id"] == dev_eui(0)
        assert stored["window"]["timestamps"][stored["window"]["raise_row"]] == raised.timestamp

        # the clear's key finds the same episode's readings
        _publish(broker, {"key": cleared.key, "label": "false", "request_id": "r2"})
        reply = _reply(probe, "r2")
        assert reply["ok"] and reply["known"] and reply["label"] == "false_alarm", reply

        # a well-formed key the daemon kept nothing of: stored, said so
        _publish(broker, {"key": "no-such-alert", "label": "false", "request_id": "r3"})
        reply = _reply(probe, "r3")
        assert reply["ok"] and not reply["known"] and reply["window_rows"] == 0

        # malformed verdicts: answered with the reason, counted, nothing stored
        _publish(broker, b'{"key": "bad key!", "label": "false", "request_id": "r4"}')
        assert _reply(probe, "r4")["reason"] == "bad_key"
        _publish(broker, {"key": raised.key, "label": "maybe", "request_id": "r5"})
        reply = _reply(probe, "r5")
        assert reply["reason"] == "bad_label" and not reply["ok"] and reply["key"] == raised.key
        _publish(broker, {"key": raised.key, "label": "false", "request_id": "r6"}, retain=True)
        assert _reply(probe, "r6")["reason"] == "retained"
        _publish(broker, b"not json")
        deadline = time.monotonic() + 10
        while gw.metrics.get("alert_feedback_rejects_total", reason="not_json") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        for reason in ("bad_key", "bad_label", "retained", "not_json"):
            assert gw.metrics.get("alert_feedback_rejects_total", reason=reason) == 1, reason
        assert gw.metrics.get("alert_feedback_total", result="ok", label="confirmed") == 1
        assert gw.metrics.get("alert_feedback_total", result="ok", label="false_alarm") == 2
        verdicts = load_feedback(state_dir)
        assert set(verdicts) == {raised.key, cleared.key, "no-such-alert"}
        assert verdicts[raised.key]["label"] == "confirmed"  # the refused "maybe" / retained changed nothing

        # what model finetune --feedback reads: both verdicts with readings, the unknown one left out
        found = labelled_windows(state_dir, ["temperature_1", "humidity_2"])
        assert sorted(w.key for w in found.windows) == sorted([raised.key, cleared.key])
        assert found.skipped == {"no_window": 1}
    finally:
        probe.close()

"""Model activation over the MQTT command topic ([commands]) against a real Mosquitto and a
real ``lora-gateway run`` child: a second installed version is activated under a stream of
readings and none is lost; a version that is not installed, or that fails to load, gets an
error reply and the old model keeps serving; malformed commands are rejected and counted.
Also: the bundled base serves configured adapters directly (its LoRA-input graph)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from paho.mqtt import client as mqtt

from gateway.config import DEFAULT_MODEL_DIR, GatewayConfig
from gateway.control.command_topic import CommandRejected, parse_activate
from models.store import ModelStore
from tests.gateway_process import GatewayProcess, write_config
from tests.mqtt_probe import Probe
from tests.test_e2e_mqtt import wait_for
from tests.test_fault_model_switch import Stream, versioned_copy
from tests.uplink_factory import field_uplinks

PREFIX = "lora-gateway/gw-proc/command/model"
NAME = "field-sensor-patch-ae"


@pytest.mark.parametrize(("payload", "retained", "reason"), [
    (b"x" * 5000, False, "too_large"),
    (b"\xff\xfe", False, "not_json"),
    (b"{not json", False, "not_json"),
    (b"[1, 2]", False, "not_object"),
    (b'{"model": "a@1", "force": true}', False, "unknown_key"),
    (b'{"model": "a"}', False, "bad_model"),
    (b'{"model": "../etc@1"}', False, "bad_model"),
    (b'{"model": 7}', False, "bad_model"),
    (b'{"model": "a@1", "request_id": [1]}', False, "bad_request_id"),
    (b'{"model": "a@1", "request_id": true}', False, "bad_request_id"),
    (b'{"model": "a@1", "request_id": "r"}', True, "retained"),
])
def test_malformed_commands_are_rejected_with_a_reason(payload: bytes, retained: bool, reason: str) -> None:
    with pytest.raises(CommandRejected) as info:
        parse_activate(payload, retained=retained)
    assert info.value.reason == reason


def test_command_parses_and_is_off_by_default() -> None:
    cmd = parse_activate(b'{"model": "field-sensor-patch-ae@1.0.0-b", "request_id": 42}')
    assert (cmd.model, cmd.request_id) == ("field-sensor-patch-ae@1.0.0-b", "42")
    assert GatewayConfig().commands.enabled is False


def test_bundled_base_serves_configured_adapters_and_plain_graph_without() -> None:
    from gateway.service import Gateway

    example = DEFAULT_MODEL_DIR.parent / "site_adapters" / "example-site"
    with_adapters = Gateway(GatewayConfig.model_validate({"model": {"adapters": {"example": str(example)}}}), None, None)
    rt = with_adapters.load_runtime(DEFAULT_MODEL_DIR)
    assert rt.graph_file == "model_lora.onnx" and rt.adapter_names == ["example"]
    plain = Gateway(GatewayConfig(), None, None).load_runtime(DEFAULT_MODEL_DIR)
    assert plain.graph_file == "model.onnx" and plain.adapter_names == []


def _command(broker, body: dict | bytes, retain: bool = False) -> None:  # type: ignore[no-untyped-def]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        client.publish(f"{PREFIX}/activate", payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _reply(probe: Probe, request_id: str, timeout: float = 30.0) -> dict:
    msg = probe.wait_for(lambda m: json.loads(m.payload).get("request_id") == request_id, timeout)
    return json.loads(msg.payload)


def test_activate_over_the_command_topic_under_a_stream(broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    v1 = store.install(versioned_copy(tmp_path, "1.0.0-a"))
    store.activate(v1.name, v1.version)
    v2 = store.install(versioned_copy(tmp_path, "1.0.0-b"))
    v3 = store.install(versioned_copy(tmp_path, "1.0.0-c"))
    graph = v3.path / "model.onnx"  # corrupted on disk after its install: fails to load
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.chmod(0o644)
    graph.write_bytes(bytes(data))
    commands = {"enabled": True, "host": broker.host, "port": broker.port, "client_id": "gw-proc-cmd",
                "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    config, port = write_config(tmp_path, broker, extra={"commands": commands})
    uplinks = field_uplinks(devices=4, readings=600)
    probe = Probe(broker.host, broker.port, f"{PREFIX}/result")
    gw = GatewayProcess(config, port, tmp_path / "gateway.log")
    stream = Stream(broker.host, broker.port, uplinks)
    try:
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 30), gw.log()
        assert wait_for(lambda: gw.metric("model_commands_connected") == 1, 10), gw.log()
        assert gw.metric("model_info", version="1.0.0-a") == 1
        stream.start()
        assert wait_for(lambda: gw.metric("readings_total") >= 400, 30)

        # 1. the second installed version, activated while readings stream in
        _command(broker, {"model": v2.ref, "request_id": "r1"})
        reply = _reply(probe, "r1")
        assert reply["ok"] and reply["changed"] and reply["reason"] == "activated", reply
        assert reply["serving"] == f"{NAME}@1.0.0-b" and reply["model"] == v2.ref
        assert gw.metric("model_info", version="1.0.0-b") == 1 and gw.metric("model_info", version="1.0.0-a") == 0
        assert store.active_model().ref == v2.ref
        at_switch = gw.metric("readings_total")
        assert 0 < at_switch < len(uplinks) and stream.is_alive()  # the stream was still running

        # 2. a version that is not installed: error reply, nothing changes
        _command(broker, {"model": f"{NAME}@9.9.9", "request_id": "r2"})
        reply = _reply(probe, "r2")
        assert not reply["ok"] and reply["reason"] == "not_installed" and "9.9.9" in reply["error"], reply
        assert reply["serving"] == f"{NAME}@1.0.0-b"

        # 3. an installed version that fails to load: the old one keeps serving, the store too
        _command(broker, {"model": v3.ref, "request_id": "r3"})
        reply = _reply(probe, "r3")
        assert not reply["ok"] and reply["reason"] == "load_failed" and "model.onnx" in reply["error"], reply
        assert reply["serving"] == f"{NAME}@1.0.0-b" and store.active_model().ref == v2.ref
        assert gw.metric("model_reload_failures_total") == 1 and gw.metric("model_reloads_total") == 1
        assert gw.metric("model_info", version="1.0.0-b") == 1 and gw.metric("model_info", version="1.0.0-c") == 0

        # 4. malformed and retained commands: answered, counted, never run
        _command(broker, b'{"model": "oops", "request_id": "r4"}')
        assert _reply(probe, "r4")["reason"] == "bad_model"
        _command(broker, b"not json at all")
        assert wait_for(lambda: gw.metric("model_command_rejects_total", reason="not_json") == 1, 10)
        _command(broker, {"model": v1.ref, "request_id": "r5"}, retain=True)
        assert _reply(probe, "r5")["reason"] == "retained"
        assert gw.metric("model_info", version="1.0.0-b") == 1
        assert gw.metric("model_commands_total", result="ok") == 1
        assert gw.metric("model_commands_total", result="error") == 2

        stream.join(120)
        assert stream.error is None and stream.published == len(uplinks)
        assert wait_for(lambda: gw.metric("readings_total") == len(uplinks), 60), gw.metrics_text()[-3000:]
        assert wait_for(lambda: gw.metric("ingest_queue_depth") == 0, 10)
        assert gw.metric("inference_failures_total") == 0 and gw.metric("windows_scored_total") > 0
        gw.signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        gw.close()
        probe.close()
        if stream.is_alive():
            stream.join(60)

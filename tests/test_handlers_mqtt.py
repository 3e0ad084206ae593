"""mqtt alert handler against a real Mosquitto: topics, retained state and status, last will,
outage and replay, refused credentials, TLS."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Broker, free_port
from mqtt_probe import Probe
from paho.mqtt import client as mqtt

from gateway.alerts.dispatcher import Dispatcher
from gateway.alerts.outbox import Outbox
from gateway.contracts import DeliveryError, PluginContext
from gateway.metrics import Metrics
from gateway.types import Alert, RadioMeta, Reading
from plugins.handlers.mqtt_handler import MqttHandler, MqttHandlerOptions

PREFIX = "lgw/test"


def alert(i: int, state: str = "raised", device: str = "dev/1") -> Alert:
    return Alert(device, "anomaly", state, "warning", 1000.0 + i, f"m{i}", f"key{i}", score=1.5)  # type: ignore[arg-type]


def make(broker: Broker, metrics: Metrics | None = None, **opts: object) -> MqttHandler:
    base: dict[str, object] = {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX,
                               "reconnect_min_s": 1, "reconnect_max_s": 2, "ack_timeout_s": 5}
    base.update(opts)
    ctx = PluginContext(metrics=metrics or Metrics(), gateway_id="gw1")
    return MqttHandler("mqtt", MqttHandlerOptions(**base), ctx)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_alert_state_status_and_telemetry(broker: Broker, protocol: str) -> None:
    probe = Probe(broker.host, broker.port, f"{PREFIX}/#")
    h = make(broker, protocol=protocol)
    try:
        h.start()
        assert h.conn.wait_connected(10)
        probe.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.text == "online")
        h.deliver(alert(1))
        # The device id's '/' cannot open a new topic level.
        msg = probe.wait_for(lambda m: m.topic == f"{PREFIX}/dev_1/alert")
        body = json.loads(msg.payload)
        assert body["key"] == "key1" and body["state"] == "raised" and body["gateway_id"] == "gw1"
        if protocol == "5":
            assert ("key", "key1") in msg.properties.UserProperty
        state = json.loads(probe.wait_for(lambda m: m.topic == f"{PREFIX}/dev_1/state").payload)
        assert state["state"] == "problem" and state["alerts"]["anomaly"]["key"] == "key1"
        h.deliver(alert(2, "cleared"))
        probe.wait_for(lambda m: m.topic == f"{PREFIX}/dev_1/state" and json.loads(m.payload)["state"] == "ok")
        h.on_reading(Reading("dev/1", 5.0, {"temp": 21.5}, radio=RadioMeta(rssi=-90.0)))
        tele = json.loads(probe.wait_for(lambda m: m.topic == f"{PREFIX}/dev_1/telemetry").payload)
        assert tele["values"] == {"temp": 21.5} and tele["radio"]["rssi"] == -90.0
        # A dashboard connecting later gets the retained status and state.
        late = Probe(broker.host, broker.port, f"{PREFIX}/#")
        try:
            st = late.wait_for(lambda m: m.topic == f"{PREFIX}/dev_1/state")
            assert st.retain and json.loads(st.payload)["state"] == "ok"
            assert late.wait_for(lambda m: m.topic == f"{PREFIX}/status").text == "online"
            assert late.on(f"{PREFIX}/dev_1/alert") == []  # alerts are not retained
        finally:
            late.close()
    finally:
        h.stop()
        h.stop()
    probe.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.text == "offline")
    probe.close()


def test_deliver_raises_when_not_connected(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    h = MqttHandler("mqtt", MqttHandlerOptions(host="127.0.0.1", port=port, ack_timeout_s=1),
                    PluginContext(metrics=Metrics()))
    h.start()
    try:
        with pytest.raises(DeliveryError, match="not connected"):
            h.deliver(alert(1))
        h.on_reading(Reading("d", 1.0, {"t": 1.0}))  # never raises
        assert h.metrics.get("telemetry_dropped_total", reason="mqtt_disconnected") == 1
    finally:
        h.stop()


def test_last_will_marks_gateway_offline_when_killed(broker: Broker) -> None:
    probe = Probe(broker.host, broker.port, f"{PREFIX}/status")
    code = textwrap.dedent(f"""
        import time
        from gateway.contracts import PluginContext
        from gateway.metrics import Metrics
        from plugins.handlers.mqtt_handler import MqttHandler, MqttHandlerOptions
        h = MqttHandler("mqtt", MqttHandlerOptions(host={broker.host!r}, port={broker.port},
                        topic_prefix={PREFIX!r}), PluginContext(metrics=Metrics()))
        h.start()
        assert h.conn.wait_connected(10)
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        probe.wait_for(lambda m: m.text == "online")
        os.kill(proc.pid, signal.SIGKILL)  # the socket closes without DISCONNECT
        proc.wait(10)
        offline = probe.wait_for(lambda m: m.text == "offline", timeout=10)
        assert offline.topic == f"{PREFIX}/status"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        probe.close()
    # The will is retained: a dashboard connecting now sees the gateway offline.
    late = Probe(broker.host, broker.port, f"{PREFIX}/status")
    try:
        assert late.wait_for(lambda m: True).text == "offline"
    finally:
        late.close()


def test_broker_outage_pending_alerts_delivered_after_return(broker: Broker, tmp_path: Path) -> None:
    m = Metrics()
    # A persistent subscriber session: the broker keeps its messages across the restart.
    probe = Probe(broker.host, broker.port, f"{PREFIX}/+/alert", client_id="probe-outage",
                  clean=False, protocol=mqtt.MQTTv311)
    h = make(broker, m)
    with Outbox(tmp_path / "o.db", ["mqtt"], 1 << 20, m, base_backoff_s=0.2, max_backoff_s=1) as ob:
        d = Dispatcher(ob, [h], m, idle_poll_s=0.2)
        h.start()
        d.start()
        try:
            assert h.conn.wait_connected(10)
            ob.append(alert(1))
            probe.wait_for(lambda msg: json.loads(msg.payload)["key"] == "key1")
            deadline = time.monotonic() + 10
            while ob.pending("mqtt"):  # the retained state is acknowledged too
                assert time.monotonic() < deadline
                time.sleep(0.02)
            broker.stop()
            while h.conn.connected():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            for i in (2, 3, 4):
                ob.append(alert(i))
            while m.get("delivery_failures_total", handler="mqtt") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert ob.pending("mqtt") == 3
            broker.start()
            for i in (2, 3, 4):
                got = json.loads(probe.wait_for(lambda msg, i=i: json.loads(msg.payload)["key"] == f"key{i}",
                                                timeout=20).payload)
                assert got["replay"] is True
            deadline = time.monotonic() + 5
            while ob.pending("mqtt"):
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            d.stop(2)
            h.stop()
            probe.close()
    keys = [json.loads(x.payload)["key"] for x in probe.messages]
    assert keys.index("key2") < keys.index("key3") < keys.index("key4")
    assert m.get("alerts_replayed_total", handler="mqtt") == 3


def _with_password(broker: Broker, tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "gw", "s3cret-pass"], check=True,
                   capture_output=True)
    broker.stop()
    broker.conf.write_text(broker.conf.read_text().replace(
        "allow_anonymous true\n", f"allow_anonymous false\npassword_file {pw}\n"))
    broker.start()


def test_refused_credentials_stop_retrying_and_never_log_the_password(
        broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _with_password(broker, tmp_path)
    monkeypatch.setenv("TEST_MQTT_PW", "wrong-password")
    m = Metrics()
    caplog.set_level(logging.DEBUG)
    h = make(broker, m, username="gw", password_env="TEST_MQTT_PW")
    h.start()
    try:
        deadline = time.monotonic() + 10
        while h.conn.auth_failed is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(2.5)  # longer than the reconnect back-off: no second attempt
        assert m.get("mqtt_connect_failures_total") == 1
        with pytest.raises(DeliveryError, match="refused the credentials"):
            h.deliver(alert(1))
    finally:
        h.stop()
    assert "not retrying" in caplog.text
    assert "wrong-password" not in caplog.text
    # The right password from a file connects.
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret-pass\n")
    ok = make(broker, Metrics(), username="gw", password_file=pwfile)
    ok.start()
    try:
        assert ok.conn.wait_connected(10)
        ok.deliver(alert(2))
    finally:
        ok.stop()
    assert "s3cret-pass" not in caplog.text


def test_unset_password_env_is_a_clear_error(broker: Broker) -> None:
    h = make(broker, username="gw", password_env="TEST_MQTT_PW_NOT_SET")
    with pytest.raises(ValueError, match="TEST_MQTT_PW_NOT_SET"):
        h.start()
    h.stop()


def _make_certs(d: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")


def test_tls_verifies_the_broker_certificate(broker: Broker, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _make_certs(certs)
    tls_port = free_port()
    broker.stop()
    broker.conf.write_text(broker.conf.read_text() + f"listener {tls_port} 127.0.0.1\ncafile {certs}/ca.pem\n"
                           f"certfile {certs}/server.pem\nkeyfile {certs}/server.key\n")
    broker.start()
    good = make(broker, port=tls_port, tls={"ca_file": certs / "ca.pem"})
    # Checks are on by default: the system store does not know the test CA.
    bad = make(broker, Metrics(), port=tls_port, tls={})
    # The certificate names 127.0.0.1, not localhost: the host name check refuses it.
    wrong_name = make(broker, Metrics(), host="localhost", port=tls_port, tls={"ca_file": certs / "ca.pem"})
    for h in (good, bad, wrong_name):
        h.start()
    try:
        assert good.conn.wait_connected(10)
        good.deliver(alert(1))
        assert not bad.conn.wait_connected(2)
        assert not wrong_name.conn.connected()
        with pytest.raises(DeliveryError):
            bad.deliver(alert(1))
    finally:
        for h in (good, bad, wrong_name):
            h.stop()

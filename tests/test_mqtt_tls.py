"""TLS to a real Mosquitto: certificate checks are on, a trusted CA connects, an untrusted one does not."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gateway.contracts import PluginContext
from gateway.metrics import Metrics
from plugins.sources.mqtt.source import MqttSource, MqttSourceOptions
from tests.conftest import Broker
from tests.uplink_factory import field_uplinks


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return key, crt


def make_server_cert(directory: Path, ca_key: Path, ca_crt: Path) -> tuple[Path, Path]:
    key, csr, crt, ext = directory / "server.key", directory / "server.csr", directory / "server.crt", directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key),
                    "-out", str(csr)], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
                    "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt)], check=True, capture_output=True)
    return key, crt


@pytest.fixture
def tls_broker(tmp_path: Path):
    ca_key, ca_crt = make_ca(tmp_path, "site-ca")
    key, crt = make_server_cert(tmp_path, ca_key, ca_crt)
    broker = Broker(tmp_path / "mosquitto")
    broker.conf.write_text(broker.conf.read_text()
                           + f"cafile {ca_crt}\ncertfile {crt}\nkeyfile {key}\n")
    broker.start()
    try:
        yield broker, ca_crt
    finally:
        broker.stop()


def _source(broker: Broker, ca: Path | None, name: str) -> tuple[MqttSource, Metrics]:
    metrics = Metrics()
    opts = MqttSourceOptions(host="127.0.0.1", port=broker.port, client_id=f"tls-{name}", tls={"ca_file": ca} if ca else {},
                             reconnect_min_s=1, reconnect_max_s=1)
    return MqttSource(name, opts, PluginContext(metrics=metrics)), metrics


def test_trusted_ca_connects_and_receives(tls_broker, tmp_path: Path) -> None:
    broker, ca = tls_broker
    source, _ = _source(broker, ca, "good")
    got = []
    source.start(got.append)
    try:
        assert source.wait_connected(10)
        # publish through a TLS client as well
        from paho.mqtt import client as mqtt
        pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="tls-pub")
        pub.tls_set(ca_certs=str(ca))
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        import json
        for topic, body in field_uplinks(devices=1, readings=3):
            pub.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) == 3
    finally:
        source.stop()


def test_untrusted_certificate_is_refused_by_default(tls_broker, tmp_path: Path) -> None:
    broker, _ = tls_broker
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_ca = make_ca(other, "someone-else")
    source, _ = _source(broker, wrong_ca, "bad")
    source.start(lambda u: None)
    try:
        assert not source.wait_connected(3)
    finally:
        source.stop()

"""The ``mqtt`` source with ``receive_process = true`` against a real Mosquitto: chunks cross
the pipe intact, PUBACKs follow the ingest log, a killed child loses nothing acknowledged
(the broker redelivers, the duplicate check drops the copies), malformed messages are
counted rejects in the child that reach the parent's metrics, and a clean stop leaves
nothing for the broker to redeliver."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from gateway.contracts import PluginContext
from gateway.ingest.accept import IngestAcceptor
from gateway.ingest.log import IngestLog
from gateway.metrics import Metrics
from gateway.types import RadioMeta, RawUplink
from plugins.sources.mqtt import chunk_codec
from plugins.sources.mqtt.process import ProcessMqttSource
from plugins.sources.mqtt.source import MqttSourceOptions, _factory
from tests.conftest import Broker
from tests.gateway_process import GatewayProcess, write_config
from tests.test_e2e_mqtt import make_gateway, wait_for
from tests.uplink_factory import chirpstack_v4, dev_eui, field_uplinks, lpp, publish_all

TOPIC = "application/app-1/device/+/event/up"


def _uplinks(n: int, first: int = 0) -> list[tuple[str, dict]]:
    out = []
    for k in range(first, first + n):
        eui = dev_eui(k % 13)
        out.append((f"application/app-1/device/{eui}/event/up",
                    chirpstack_v4(eui, 1_764_800_000.0 + k, k, lpp(20 + (k % 7), 60))))
    return out


class Harness:
    """A ProcessMqttSource feeding a real IngestAcceptor (real log, fsync), as the daemon wires it."""

    def __init__(self, broker: Broker, root: Path, client_id: str = "rx-proc", gate: threading.Event | None = None) -> None:
        self.metrics = Metrics()
        self.delivered: list[RawUplink] = []
        self.lock = threading.Lock()
        self.acceptor = IngestAcceptor(IngestLog(root / "ingest-log", self.metrics), self._deliver, self.metrics)
        self.acceptor.replay(0)
        self.delivered.clear()  # what an earlier run logged: this run counts what it receives
        self.acceptor.start()
        self.emitter = self.acceptor.emitter("ns", redelivers=True)
        self.emitter.self_committing = True  # the source commits each chunk; keep the acceptor's timer off it
        self.gate = gate
        self.commits_entered = threading.Event()
        if gate is not None:  # hold every commit until the test opens the gate
            commit = self.emitter.commit

            def gated() -> bool:
                self.commits_entered.set()
                gate.wait(30)
                return commit()

            self.emitter.commit = gated  # type: ignore[method-assign]
        options = MqttSourceOptions(host=broker.host, port=broker.port, client_id=client_id, receive_process=True,
                                    topics=[{"topic": TOPIC, "shape": "chirpstack_v4"}], reconnect_min_s=0.1,
                                    reconnect_max_s=0.5)  # type: ignore[list-item]
        source = _factory("ns", options, PluginContext(metrics=self.metrics, gateway_id="gw"))
        assert isinstance(source, ProcessMqttSource)
        self.source = source
        source.start(self.emitter)
        assert source.wait_connected(20), "the receive process did not connect"

    def _deliver(self, up: RawUplink) -> None:
        with self.lock:
            self.delivered.append(up)

    def keys(self) -> list[tuple[str, int | None]]:
        with self.lock:
            return [(u.device_id, u.f_cnt) for u in self.delivered]

    def counter(self, name: str, **labels: str) -> float:
        want = tuple(sorted(labels.items()))
        return sum(v for n, lb, v in self.metrics.counters() if n == name and all(p in lb for p in want))

    def close(self) -> None:
        self.source.stop()
        self.acceptor.close()


def test_the_chunk_codec_gives_back_the_same_uplinks() -> None:
    ups = [RawUplink("a840410000000001", 1.5, b"\x01\x67\x00\xd2", 2, 7,
                     RadioMeta(-80.5, 7.25, 7, 868_100_000, 125_000, "0016c001f153a14c"),
                     {"temperature": 21.0, "nested": {"list": [1, None, "x", True]}}, "node-1", "", "chirpstack_v4", "dd-1"),
           RawUplink("plain-7", 2.0, b"", None, None, RadioMeta(), None, None, "", "json", None)]
    message = chunk_codec.decode(chunk_codec.encode((chunk_codec.CHUNK, 3, chunk_codec.pack_uplinks(ups), [], [])))
    got = chunk_codec.unpack_uplinks(message[2], "ns")
    for u in ups:
        u.source = "ns"
    assert got == ups


def test_uplinks_flow_end_to_end_through_the_receive_process(broker: Broker, tmp_path: Path) -> None:
    sources = [{"type": "mqtt", "name": "chirpstack", "host": broker.host, "port": broker.port,
                "client_id": "gw-test-src", "receive_process": True}]
    gw = make_gateway(broker, tmp_path, {"sources": sources})
    gw.start()
    try:
        source = gw.sources[0]
        assert isinstance(source, ProcessMqttSource) and source.child_pid() not in (None, os.getpid())
        uplinks = field_uplinks(devices=3, readings=40)
        publish_all(broker.host, broker.port, uplinks)
        snap = gw.metrics.snapshot
        assert wait_for(lambda: snap().get("readings_total", 0) >= len(uplinks), 60), snap()
        counters = snap()
        assert counters.get("readings_total") == len(uplinks)
        assert counters.get("uplinks_received_total{source=chirpstack}") == len(uplinks)  # counted in the child
        assert counters.get("source_connected{source=chirpstack}") == 1
    finally:
        gw.stop()
    assert source.child_pid() is not None and not source._proc.is_alive()  # type: ignore[union-attr]
    assert source._proc.exitcode == 0  # type: ignore[union-attr]


def test_killing_the_receive_process_loses_no_acknowledged_uplink(broker: Broker, tmp_path: Path) -> None:
    h = Harness(broker, tmp_path)
    try:
        first = h.source.child_pid()
        msgs = _uplinks(3000)
        publisher = threading.Thread(target=publish_all, args=(broker.host, broker.port, msgs))
        publisher.start()
        assert wait_for(lambda: len(h.keys()) >= 200, 30)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        publisher.join(60)
        assert wait_for(lambda: len(h.keys()) >= len(msgs), 60), len(h.keys())
        assert h.source.child_pid() != first
        assert h.counter("receive_process_restarts_total", source="ns") == 1
        keys = h.keys()
        assert sorted(keys) == sorted((dev_eui(k % 13), k) for k in range(len(msgs)))  # every one, once
        assert len(list(h.acceptor.log.records(0))) == len(msgs)
    finally:
        h.close()


def test_a_chunk_logged_after_the_child_died_is_not_taken_twice(broker: Broker, tmp_path: Path) -> None:
    """The chunk is in the parent when the child dies: its PUBACKs never leave, the broker
    redelivers it to the next child, and the duplicate check drops every copy."""
    gate = threading.Event()
    h = Harness(broker, tmp_path, gate=gate)
    try:
        msgs = _uplinks(50)
        publish_all(broker.host, broker.port, msgs)
        assert h.commits_entered.wait(20)
        first = h.source.child_pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        gate.set()
        assert wait_for(lambda: h.counter("uplinks_duplicate_total", source="ns") > 0, 30)
        assert wait_for(lambda: len(h.keys()) >= len(msgs), 30)
        assert sorted(h.keys()) == sorted((dev_eui(k % 13), k) for k in range(len(msgs)))
        assert h.source.child_pid() != first
    finally:
        gate.set()
        h.close()


def test_malformed_messages_are_counted_rejects_in_the_child(broker: Broker, tmp_path: Path) -> None:
    h = Harness(broker, tmp_path)
    try:
        good = _uplinks(20)
        bad: list[tuple[str, bytes | dict]] = [
            ("application/app-1/device/a840410000000001/event/up", b"{not json"),
            ("application/app-1/device/a840410000000001/event/up", b"[1, 2]"),
            ("application/app-1/device/a840410000000001/event/up", json.dumps({"deviceInfo": {"devEui": "xyz"}}).encode()),
            ("application/app-1/device/a840410000000001/event/up", json.dumps({"deviceInfo": {"devEui": "a840410000000001"},
                                                                             "data": "@@not base64@@"}).encode()),
        ]
        publish_all(broker.host, broker.port, [*good[:10], *bad, *good[10:]])
        assert wait_for(lambda: len(h.keys()) >= len(good) and h.counter("uplinks_rejected_total") >= len(bad), 30)
        assert h.counter("uplinks_rejected_total", reason="malformed_json") == 1
        assert h.counter("uplinks_rejected_total", reason="not_object") == 1
        assert h.counter("uplinks_rejected_total", reason="bad_device_id") == 1
        assert h.counter("uplinks_rejected_total", reason="bad_base64") == 1
        assert h.counter("uplinks_received_total", source="ns") == len(good) + len(bad)
        assert sorted(h.keys()) == sorted((dev_eui(k % 13), k) for k in range(len(good)))
    finally:
        h.close()


def test_a_clean_stop_leaves_nothing_to_redeliver(broker: Broker, tmp_path: Path) -> None:
    h = Harness(broker, tmp_path)
    msgs = _uplinks(500)
    try:
        publish_all(broker.host, broker.port, msgs)
        assert wait_for(lambda: len(h.keys()) >= len(msgs), 30)
    finally:
        h.close()
    assert h.source._proc is not None and h.source._proc.exitcode == 0
    again = Harness(broker, tmp_path)  # same client id and log: a redelivery would be a duplicate
    try:
        publish_all(broker.host, broker.port, _uplinks(5, first=len(msgs)))
        assert wait_for(lambda: len(again.keys()) >= 5, 30)
        assert again.counter("uplinks_duplicate_total") == 0
        assert sorted(again.keys()) == sorted((dev_eui(k % 13), k) for k in range(len(msgs), len(msgs) + 5))
    finally:
        again.close()


def test_a_failed_log_write_withholds_the_acks_and_the_broker_redelivers(broker: Broker, tmp_path: Path) -> None:
    h = Harness(broker, tmp_path)
    try:
        write = h.acceptor.log.write
        failed: list[int] = []

        def flaky_write(uplinks: list[RawUplink]) -> None:
            if not failed:
                failed.append(len(uplinks))
                raise OSError(28, "No space left on device")
            write(uplinks)

        h.acceptor.log.write = flaky_write  # type: ignore[method-assign]
        msgs = _uplinks(300)
        publish_all(broker.host, broker.port, msgs)
        assert wait_for(lambda: len(h.keys()) >= len(msgs), 30), len(h.keys())
        assert failed and h.counter("uplinks_dropped_total", reason="log_write_failed") == failed[0]
        assert h.counter("mqtt_connects_total", source="ns") >= 2  # the child reconnected for the redelivery
        assert sorted(h.keys()) == sorted((dev_eui(k % 13), k) for k in range(len(msgs)))
        assert h.source.child_pid() is not None and h.counter("receive_process_restarts_total") == 0
    finally:
        h.close()


def test_past_its_restart_budget_the_receive_process_stays_down(broker: Broker, tmp_path: Path) -> None:
    metrics = Metrics()
    options = MqttSourceOptions(host=broker.host, port=broker.port, client_id="rx-down", receive_process=True,
                                receive_process_max_restarts=0)
    source = _factory("ns", options, PluginContext(metrics=metrics, gateway_id="gw"))
    assert isinstance(source, ProcessMqttSource)
    source.start(lambda up: None)
    try:
        assert source.wait_connected(20)
        pid = source.child_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not source.connected() and metrics.get("receive_process_up") == 0, 20)
        assert source._thread is not None
        source._thread.join(10)
        assert not source._thread.is_alive() and source.child_pid() == pid  # not started again
        assert metrics.get("receive_process_restarts_total") == 0
    finally:
        source.stop()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_the_daemon_with_a_receive_process_stops_cleanly_on_sigterm_to_its_group(broker: Broker, tmp_path: Path) -> None:
    """``lora-gateway run`` for real: /metrics shows the child's counters, and a SIGTERM to the
    daemon and its child at once (systemd's default control-group kill) ends both cleanly."""
    config, port = write_config(tmp_path, broker, extra={"sources": [
        {"type": "mqtt", "name": "chirpstack", "host": broker.host, "port": broker.port, "client_id": "gw-proc-src",
         "receive_process": True, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}]})
    gw = GatewayProcess(config, port, tmp_path / "gateway.log")
    try:
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 60), gw.log()[-2000:]
        uplinks = field_uplinks(devices=3, readings=60)
        publish_all(broker.host, broker.port, uplinks)
        assert wait_for(lambda: gw.metric("readings_total") == len(uplinks), 30), gw.log()[-2000:]
        assert gw.metric("uplinks_received_total", source="chirpstack") == len(uplinks)
        assert gw.metric("receive_process_up", source="chirpstack") == 1
        kids = [k for k in _children(gw.pid) if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
        assert kids, "no receive process found under the daemon"
        for pid in [gw.pid, *kids]:
            os.kill(pid, signal.SIGTERM)
        assert gw.wait(30) == 0, gw.log()[-2000:]
        assert "gateway stopped" in gw.log()
        assert wait_for(lambda: not any(Path(f"/proc/{k}").exists() for k in kids), 10)
    finally:
        gw.close()

"""Acknowledged means durable: ``lora-gateway run`` killed (SIGKILL) or restarted (SIGTERM)
under a stream of ChirpStack v4 uplinks, with real Mosquitto brokers on both sides.

- SIGKILL mid-stream, then a restart: every uplink the broker was given comes out as
  durable telemetry on the dashboard broker (none lost); redeliveries are dropped and
  counted; the restart does not crash.
- SIGTERM restart: a device calibrated before it is scored on its first reading after it.
- SIGKILL after a checkpoint: the alert stream (deduplicated by idempotency key, which is
  what at-least-once delivery promises receivers) equals that of an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

from paho.mqtt import client as mqtt

from tests.conftest import Broker
from tests.gateway_process import GatewayProcess, write_config
from tests.test_e2e_mqtt import wait_for
from tests.test_fault_broker_outage import file_alerts
from tests.uplink_factory import Fault, field_uplinks, publish_all


class TelemetrySubscriber:
    """A dashboard with a persistent session taking every telemetry message (QoS 1)."""

    def __init__(self, broker: Broker) -> None:
        self.seen: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="telemetry-dashboard", clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("site/+/telemetry", qos=1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        key = (doc["device_id"], int(doc["f_cnt"]))
        with self._lock:
            self.seen[key] = self.seen.get(key, 0) + 1

    def unique(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self.seen)

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.seen.values())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def durable_config(tmp_path: Path, broker: Broker, dashboard: Broker, **state: object) -> tuple[Path, int]:
    handlers = [{"type": "file", "path": str(tmp_path / "alerts.jsonl")},
                {"type": "mqtt", "host": dashboard.host, "port": dashboard.port, "topic_prefix": "site",
                 "telemetry": True, "telemetry_durable": True, "telemetry_qos": 1,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}]
    return write_config(tmp_path, broker, extra={"handlers": handlers, "state": dict(state)})


def test_sigkill_mid_stream_loses_no_uplink_and_counts_the_duplicates(broker: Broker, tmp_path: Path) -> None:
    dashboard = Broker(tmp_path / "dashboard")
    dashboard.start()
    sub = TelemetrySubscriber(dashboard)
    config, port = durable_config(tmp_path, broker, dashboard, checkpoint_interval_s=1.0)
    uplinks = field_uplinks(devices=50, readings=40, seed=12)  # 2,000 uplinks
    expected = {(body["deviceInfo"]["devEui"], body["fCnt"]) for _, body in uplinks}
    gw = GatewayProcess(config, port, tmp_path / "gateway-1.log")
    gw2: GatewayProcess | None = None
    try:
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 60), gw.log()
        publisher = threading.Thread(target=publish_all, args=(broker.host, broker.port, uplinks), daemon=True)
        publisher.start()
        assert wait_for(lambda: gw.metric("readings_total") >= 600, 60), gw.log()[-3000:]
        gw.signal(signal.SIGKILL)
        assert gw.wait(10) == -signal.SIGKILL
        publisher.join(60)
        assert not publisher.is_alive()
        gw2 = GatewayProcess(config, port, tmp_path / "gateway-2.log")
        assert wait_for(lambda: sub.unique() >= expected, 120), (len(expected - sub.unique()), gw2.log()[-3000:])
        lost = len(expected - sub.unique())
        print(f"SIGKILL at >= 600 readings: lost {lost} of {len(expected)}; duplicate telemetry {sub.duplicates()}; "
              f"replayed {gw2.metric('ingest_log_replayed_total'):.0f}; "
              f"redeliveries dropped {gw2.metric('uplinks_duplicate_total'):.0f}")
        assert lost == 0
        assert gw2.metric("uplinks_quarantined_total") == 0
        gw2.signal(signal.SIGTERM)
        assert gw2.wait(30) == 0, gw2.log()[-3000:]
    finally:
        gw.close()
        if gw2 is not None:
            gw2.close()
        sub.close()
        dashboard.stop()


def test_a_device_calibrated_before_a_sigterm_restart_is_scored_on_its_first_reading(broker: Broker, tmp_path: Path) -> None:
    config, port = write_config(tmp_path, broker)
    devices = 3
    uplinks = field_uplinks(devices=devices, readings=200, seed=5)
    calibrate, after = uplinks[: 190 * devices], uplinks[190 * devices: 191 * devices]
    gw = GatewayProcess(config, port, tmp_path / "gateway-1.log")
    gw2: GatewayProcess | None = None
    try:
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 60), gw.log()
        publish_all(broker.host, broker.port, calibrate)
        assert wait_for(lambda: gw.metric("readings_total") == len(calibrate), 60), gw.log()[-3000:]
        assert gw.metric("devices_calibrated_total") == devices
        gw.signal(signal.SIGTERM)
        assert gw.wait(30) == 0, gw.log()[-3000:]
        gw2 = GatewayProcess(config, port, tmp_path / "gateway-2.log")
        assert wait_for(lambda: (h := gw2.health()) is not None and h[0] == 200, 60), gw2.log()
        assert gw2.metric("checkpoint_restored_devices") == devices
        publish_all(broker.host, broker.port, after)  # one reading per device
        assert wait_for(lambda: gw2.metric("windows_scored_total") == devices, 60), gw2.log()[-3000:]
        assert gw2.metric("readings_total") == devices
        assert gw2.metric("devices_calibrated_total") == 0  # nothing re-learnt
        gw2.signal(signal.SIGTERM)
        assert gw2.wait(30) == 0
    finally:
        gw.close()
        if gw2 is not None:
            gw2.close()


def _alert_stream(path: Path) -> list[tuple[str, str, str, str]]:
    """(key, device, kind, state) in first-seen order, duplicates (same key) dropped."""
    seen: dict[str, tuple[str, str, str, str]] = {}
    for a in file_alerts(path):
        seen.setdefault(a["key"], (a["key"], a["device_id"], a["kind"], a["state"]))
    return list(seen.values())


def _run_alert_stream(root: Path, run_broker: Broker, uplinks: list, kill_at: int | None) -> list[tuple[str, str, str, str]]:
    """Feed ``uplinks`` to a gateway process (killed with SIGKILL after ``kill_at`` of them
    and started again, when given); the alert stream it wrote."""
    config, port = write_config(root, run_broker, extra={"state": {"checkpoint_interval_s": 0.5}})
    gw = GatewayProcess(config, port, root / "gateway-1.log")
    gw2: GatewayProcess | None = None
    try:
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 60), gw.log()
        if kill_at is None:
            publish_all(run_broker.host, run_broker.port, uplinks)
            assert wait_for(lambda: gw.metric("readings_total") == len(uplinks), 120), gw.log()[-3000:]
            last = gw
        else:
            publish_all(run_broker.host, run_broker.port, uplinks[:kill_at])
            assert wait_for(lambda: gw.metric("readings_total") == kill_at, 120), gw.log()[-3000:]
            assert wait_for(lambda: gw.metric("checkpoints_total") >= 1, 30)
            gw.signal(signal.SIGKILL)
            assert gw.wait(10) == -signal.SIGKILL
            gw2 = last = GatewayProcess(config, port, root / "gateway-2.log")
            assert wait_for(lambda: (h := last.health()) is not None and h[0] == 200, 60), last.log()
            publish_all(run_broker.host, run_broker.port, uplinks[kill_at:])
            assert wait_for(lambda: last.metric("readings_total") - last.metric("ingest_log_replayed_total")
                            == len(uplinks) - kill_at, 120), last.log()[-3000:]
        assert wait_for(lambda: last.metric("outbox_pending") == 0, 30)
        last.signal(signal.SIGTERM)
        assert last.wait(30) == 0
        return _alert_stream(root / "alerts.jsonl")
    finally:
        gw.close()
        if gw2 is not None:
            gw2.close()


def test_after_sigkill_the_alert_stream_equals_an_uninterrupted_run(broker: Broker, tmp_path: Path) -> None:
    devices = 4
    uplinks = field_uplinks(devices=devices, readings=700, fault=Fault(device=1, start=420, end=520, shift=14.0), seed=3)
    (tmp_path / "straight").mkdir()
    straight = _run_alert_stream(tmp_path / "straight", broker, uplinks, None)
    (tmp_path / "killed").mkdir()
    second = Broker(tmp_path / "killed" / "broker")
    second.start()
    try:
        killed = _run_alert_stream(tmp_path / "killed", second, uplinks, 450 * devices)
    finally:
        second.stop()
    print(f"alert stream: {len(straight)} events uninterrupted, {len(killed)} after SIGKILL + restart")
    assert any(kind == "anomaly" and state == "raised" for _, _, kind, state in straight), straight
    assert killed == straight

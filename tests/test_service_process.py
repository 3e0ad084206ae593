"""The daemon as systemd runs it: a real ``lora-gateway run`` child, a real notify socket.

The test binds an AF_UNIX datagram socket and passes it as NOTIFY_SOCKET (with
WATCHDOG_USEC), as systemd does for Type=notify with WatchdogSec. It checks:

- READY=1 comes once, and only when the model serves and the source is connected
  (``/health`` answers 200 with both at that moment);
- WATCHDOG=1 pings keep coming from the pipeline loop;
- ``/metrics`` (Prometheus text over HTTP) has the families the operations promise;
- SIGHUP reloads the model (logged), the daemon keeps running;
- SIGTERM gives STOPPING=1 and a clean exit (status 0) within the drain timeout.
"""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from pathlib import Path

from tests.gateway_process import GatewayProcess, write_config
from tests.test_e2e_mqtt import wait_for
from tests.uplink_factory import field_uplinks, publish_all

DRAIN_S = 5.0
FAMILIES = [
    "lora_gateway_uplinks_received_total", "lora_gateway_readings_total", "lora_gateway_ingest_queue_depth",
    "lora_gateway_inference_batches_total", "lora_gateway_inference_seconds_total",
    "lora_gateway_inference_last_batch_size", "lora_gateway_windows_scored_total",
    "lora_gateway_alerts_pending", "lora_gateway_outbox_bytes", "lora_gateway_outbox_entries",
    "lora_gateway_mqtt_connects_total", "lora_gateway_source_connected", "lora_gateway_model_info",
    "lora_gateway_pipeline_heartbeat_timestamp",
]


class NotifySocket:
    """What systemd listens on: collects the datagrams with their arrival time."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="notify-", dir="/tmp")  # AF_UNIX paths are short
        self.path = str(Path(self._dir.name) / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def poll(self, until: float = 0.0) -> list[str]:
        """Read what has arrived (waiting up to ``until`` seconds for the first datagram)."""
        deadline = time.monotonic() + until
        while True:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                if time.monotonic() >= deadline:
                    break
                continue
            self.messages.append((time.monotonic(), data.decode()))
        return [m for _, m in self.messages]

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


def test_notify_ready_watchdog_reload_and_graceful_stop(broker, tmp_path: Path) -> None:
    config, port = write_config(tmp_path, broker, extra={"gateway": {"drain_timeout_s": DRAIN_S}})
    notify = NotifySocket()
    gw = GatewayProcess(config, port, tmp_path / "gateway.log",
                        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"})
    try:
        assert wait_for(lambda: "READY=1" in notify.poll(), 30), gw.log()
        health = gw.health()
        assert health is not None and health[0] == 200, health
        assert health[1]["model_serving"] and health[1]["sources"] == {"chirpstack": True}
        assert "gateway gw-proc ready" in gw.log()  # logged after the sources were up

        uplinks = field_uplinks(devices=3, readings=300)
        publish_all(broker.host, broker.port, uplinks)
        assert wait_for(lambda: gw.metric("readings_total") == len(uplinks), 30)
        assert wait_for(lambda: notify.poll().count("WATCHDOG=1") >= 3, 15), notify.messages
        pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
        assert max(b - a for a, b in zip(pings, pings[1:])) < 2.0  # inside WATCHDOG_USEC

        text = gw.metrics_text()
        missing = [f for f in FAMILIES if f"\n{f}" not in text and not text.startswith(f)]
        assert not missing, missing
        assert gw.metric("uplinks_received_total", source="chirpstack") == len(uplinks)
        assert gw.metric("inference_batches_total") > 0
        assert 'lora_gateway_alerts_pending{handler="file"}' in text

        gw.signal(signal.SIGHUP)
        assert wait_for(lambda: gw.metric("model_reloads_total") == 1, 20), gw.log()[-2000:]
        assert "model reload requested" in gw.log() and gw.alive()
        # the replaced runtime is closed at the next batch
        publish_all(broker.host, broker.port, field_uplinks(devices=3, readings=305, first=300))
        assert wait_for(lambda: gw.metric("model_runtimes_closed_total") == 1, 20), gw.log()[-2000:]

        # a broker outage makes the daemon not ready (503), without stopping it
        broker.stop()
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 503, 20)
        assert gw.health()[1]["sources"] == {"chirpstack": False}  # type: ignore[index]
        broker.start()
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 20), gw.log()[-2000:]
        assert gw.metric("mqtt_reconnects_total", source="chirpstack") >= 1

        assert notify.poll().count("READY=1") == 1
        sent = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.wait(DRAIN_S + 10) == 0, gw.log()[-2000:]
        took = time.monotonic() - sent
        assert "STOPPING=1" in notify.poll(0.5)
        assert took < DRAIN_S + 3, took
        assert "gateway stopped" in gw.log()
        assert not (tmp_path / "state" / "lora-gateway.pid").exists()
        print(f"SIGTERM to exit: {took:.2f} s; watchdog pings every {sum(b - a for a, b in zip(pings, pings[1:])) / (len(pings) - 1):.2f} s")
    finally:
        gw.close()
        notify.close()


def test_a_source_down_at_start_fails_the_start_unless_a_degraded_start_is_allowed(broker, tmp_path: Path) -> None:
    """READY=1 waits for the sources up to sources_ready_timeout_s; then the start fails
    (exit 1 with the reason: systemd restarts the service), or with allow_degraded_start
    the daemon serves and /health answers 503 until the source connects."""
    broker.stop()
    config, port = write_config(tmp_path, broker, extra={"gateway": {"sources_ready_timeout_s": 1.5}})
    gw = GatewayProcess(config, port, tmp_path / "gateway-1.log")
    try:
        assert gw.wait(60) == 1, gw.log()[-2000:]
        assert "source(s) chirpstack not connected within 1.5 s" in gw.log()
    finally:
        gw.close()
    config, port = write_config(tmp_path, broker, extra={"gateway": {"sources_ready_timeout_s": 1.5,
                                                                    "allow_degraded_start": True}})
    notify = NotifySocket()
    gw = GatewayProcess(config, port, tmp_path / "gateway-2.log", env={"NOTIFY_SOCKET": notify.path})
    try:
        assert wait_for(lambda: "READY=1" in notify.poll(), 60), gw.log()[-2000:]
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 503, 20)
        broker.start()
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 30), gw.log()[-2000:]
        gw.signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        gw.close()
        notify.close()

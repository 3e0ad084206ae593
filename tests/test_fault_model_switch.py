"""Models switched under a stream of readings, and a corrupt model activated, in a real daemon.

``lora-gateway run`` serves the model store's active model (in its state dir). While a
publisher streams ChirpStack uplinks over MQTT:

1. a second version is installed and activated through the store, and the daemon is told
   with ``notify_daemon`` (SIGHUP via the pid file): the served model changes
   (``model_info`` over HTTP), no reading is lost, no inference fails;
2. a third version is activated and then corrupted on disk (one byte of its ONNX graph,
   as bit rot or a half-copied file would) before the SIGHUP: the reload fails, is counted
   (``model_reload_failures_total``), and the previous model keeps serving the stream.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

from gateway.config import DEFAULT_MODEL_DIR
from models import integrity
from models.store import ModelStore, notify_daemon
from tests.gateway_process import GatewayProcess, write_config
from tests.test_e2e_mqtt import wait_for
from tests.uplink_factory import field_uplinks, publish_all


def versioned_copy(tmp_path: Path, version: str) -> Path:
    """The bundled base model under another version (same weights, manifest re-hashed)."""
    dest = tmp_path / f"base-{version}"
    shutil.copytree(DEFAULT_MODEL_DIR, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = version
    integrity.write_manifest(dest, manifest)
    return dest


class Stream(threading.Thread):
    """Publishes uplinks in small chunks until all are out (the load during the switches)."""

    def __init__(self, host: str, port: int, uplinks: list, chunk: int = 40, pace_s: float = 0.2) -> None:
        super().__init__(name="uplink-stream", daemon=True)
        self.host, self.port, self.uplinks, self.chunk, self.pace_s = host, port, uplinks, chunk, pace_s
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(0, len(self.uplinks), self.chunk):
                part = self.uplinks[i:i + self.chunk]
                publish_all(self.host, self.port, part)
                self.published += len(part)
                time.sleep(self.pace_s)  # pacing of the load, not synchronisation
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_model_switch_under_a_stream_loses_nothing_and_a_corrupt_model_never_serves(broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = ModelStore.for_state_dir(state)
    v1 = store.install(versioned_copy(tmp_path, "1.0.0-a"))
    store.activate(v1.name, v1.version)
    config, port = write_config(tmp_path, broker)
    uplinks = field_uplinks(devices=4, readings=600)
    gw = GatewayProcess(config, port, tmp_path / "gateway.log")
    stream = Stream(broker.host, broker.port, uplinks)
    try:
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 30), gw.log()
        assert gw.metric("model_info", version="1.0.0-a") == 1
        stream.start()
        assert wait_for(lambda: gw.metric("readings_total") >= 400, 30)

        # 1. a good new version, switched while readings stream in
        v2 = store.install(versioned_copy(tmp_path, "1.0.0-b"))
        store.activate(v2.name, v2.version)
        assert "SIGHUP sent" in notify_daemon(state)
        assert wait_for(lambda: gw.metric("model_reloads_total") == 1, 30), gw.log()[-2000:]
        assert gw.metric("model_info", version="1.0.0-b") == 1 and gw.metric("model_info", version="1.0.0-a") == 0
        at_switch = gw.metric("readings_total")
        assert 0 < at_switch < len(uplinks) and stream.is_alive()  # the stream was still running

        # 2. a version that is corrupted on disk after its activation
        v3 = store.install(versioned_copy(tmp_path, "1.0.0-c"))
        store.activate(v3.name, v3.version)
        graph = v3.path / "model.onnx"
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.chmod(0o644)
        graph.write_bytes(bytes(data))
        assert "SIGHUP sent" in notify_daemon(state)
        assert wait_for(lambda: gw.metric("model_reload_failures_total") == 1, 30), gw.log()[-2000:]
        assert gw.metric("model_reloads_total") == 1
        assert gw.metric("model_info", version="1.0.0-b") == 1 and gw.metric("model_info", version="1.0.0-c") == 0
        assert "previous model keeps serving" in gw.log()

        stream.join(120)
        assert stream.error is None and stream.published == len(uplinks)
        assert wait_for(lambda: gw.metric("readings_total") == len(uplinks), 60), gw.metrics_text()[-3000:]
        assert wait_for(lambda: gw.metric("ingest_queue_depth") == 0, 10)
        assert gw.metric("inference_failures_total") == 0
        assert gw.metric("windows_scored_total") > 0
        status, body = gw.health()  # type: ignore[misc]
        assert status == 200 and body["model_serving"]
        gw.signal(signal.SIGTERM)
        assert gw.wait(30) == 0
    finally:
        gw.close()
        if stream.is_alive():
            stream.join(60)

"""Recording -> export -> fine-tuning, end to end with real parts: a gateway over a real
Mosquitto records what its pipeline accepts, ``lora-gateway record export`` writes a CSV,
and ``lora-gateway model finetune`` trains a LoRA adapter on one device of it, through
options alone, whose validation loss goes down (needs the [train] extra)."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("torch")
pytest.importorskip("peft")

from train_fixtures import make_torch_base

from gateway.cli import main
from models import integrity
from tests.test_e2e_mqtt import make_gateway
from tests.uplink_factory import chirpstack_v4, dev_eui, lpp, publish_all


def site_uplinks(devices: int, readings: int, interval_s: float = 300.0) -> list[tuple[str, dict]]:
    """ChirpStack v4 uplinks of a site whose temperature has a compressor duty cycle (5 of
    every 12 readings 3 degrees up): a pattern the test base model never saw."""
    rng = np.random.default_rng(11)
    start = time.time() - readings * interval_s
    out = []
    for k in range(readings):
        ts = start + k * interval_s
        for d in range(devices):
            day = 2 * math.pi * (ts % 86400) / 86400 + d
            temp = 6 + 1.5 * math.sin(day) + (3.0 if k % 12 < 5 else 0.0) + 0.2 * rng.normal()
            hum = 70 - 5 * math.sin(day) + rng.normal()
            eui = dev_eui(d)
            out.append((f"application/app-1/device/{eui}/event/up", chirpstack_v4(eui, ts, k, lpp(temp, hum))))
    return out


def test_recorded_readings_export_and_finetune(broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_torch_base(tmp_path / "base")
    gw = make_gateway(broker, tmp_path, {"record": {"enabled": True, "flush_interval_s": 0.2}})
    gw.start()
    try:
        uplinks = site_uplinks(devices=2, readings=600)
        publish_all(broker.host, broker.port, uplinks)
        deadline = time.monotonic() + 60
        while gw.metrics.get("recorder_readings_total") < len(uplinks) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gw.stop()
    assert gw.metrics.get("recorder_readings_total") == len(uplinks) == gw.metrics.get("readings_total")
    capsys.readouterr()

    exported = tmp_path / "site.csv"
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[record]\nenabled = true\n')
    assert main(["record", "export", "--config", str(config), "--channel", "temperature_1,humidity_2",
                 "-o", str(exported)]) == 0
    assert "wrote 1200 reading(s) of 2 device(s), channel(s) temperature_1, humidity_2" in capsys.readouterr().err
    rows = list(csv.DictReader(exported.read_text().splitlines()))
    assert len(rows) == 1200 and list(rows[0]) == ["timestamp", "device_id", "temperature_1", "humidity_2"]

    out = tmp_path / "adapter"
    rc = main(["model", "finetune", "--base", str(base), "--data", str(exported), "--device", dev_eui(1),
               "--channels", "temperature_1,humidity_2", "--out", str(out), "--epochs", "8", "--patience", "3",
               "--rank", "4", "--alpha", "8", "--name", "site-recorded", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    manifest = integrity.load_manifest(out)
    integrity.verify_dir(out, manifest)
    training, ev = manifest["training"], manifest["evaluation"]
    assert training["rows"] == 600 and training["data_file"] == f"{exported}#{dev_eui(1)}"
    assert training["channels"] == ["temperature_1", "humidity_2"]
    assert ev["val_loss_after"] < 0.8 * ev["val_loss_before"], ev

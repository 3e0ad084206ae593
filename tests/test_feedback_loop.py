"""Operator feedback trains the next adapter, end to end (issue 11, point 4; [train] extra).

A cold room (seeded: diurnal cycle, noise) reports over ChirpStack uplinks to a real
in-process gateway serving the bundled base model, with recording on. From day 3 a daily
defrost cycle warms it by about 3.5 degC for an hour: the base model, calibrated on two
days without one, raises an anomaly alert at every defrost. On day 6 the compressor fails
(+5 degC for 50 readings). The daemon keeps the readings around each alert in the state
dir. The operator marks the first defrost alert false and the compressor alert confirmed
with ``lora-gateway alerts feedback``; ``model finetune --feedback STATE_DIR`` trains an
adapter on the device's recording with those verdicts; the merged adapter, served by the
same gateway over the same uplinks, raises no alert at that defrost (nor at the others)
and still raises the compressor fault. With the verdicts in the gate only (weight 0), the
adapter still fires on the marked false alarm and is refused, the reason printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("torch")
pytest.importorskip("peft")

from gateway.cli import main  # noqa: E402
from gateway.config import validate_config  # noqa: E402
from gateway.plugin_manager import Registry, make_plugin_manager  # noqa: E402
from gateway.service import Gateway  # noqa: E402
from gateway.types import Alert  # noqa: E402
from models.feedback_labels import WINDOWS_FILE, labelled_windows  # noqa: E402
from plugins.sources.mqtt.shapes import parse_uplink  # noqa: E402
from tests.uplink_factory import chirpstack_v4, dev_eui, lpp  # noqa: E402

START = 1_767_000_000.0
INTERVAL = 600.0
CAL = 288  # two days of readings calibrate the device
ROWS = 1008  # a week
FAULT = (850, 900, 5.0)
DEVICE = dev_eui(1)
CHANNELS = "temperature_1,humidity_2"


def cold_room(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = np.arange(ROWS)
    day = 2 * np.pi * (k % 144) / 144
    temp = 4 + 0.6 * np.sin(day) + 0.08 * rng.normal(size=ROWS)
    hum = 82 + 3 * np.sin(day + 1) + 0.6 * rng.normal(size=ROWS)
    bump = np.array([1.5, 3.0, 3.5, 3.5, 2.5, 1.0])
    for start in range(CAL + 60, ROWS, 144):  # the defrost, daily from day 3, 10:00
        temp[start:start + 6] += bump[:ROWS - start]
        hum[start:start + 6] -= 4 * bump[:ROWS - start] / 3.5
    a, b, shift = FAULT
    temp[a:b] += shift
    return temp, hum


def run_gateway(state: Path, model_path: Path | None = None) -> list[Alert]:
    """The week's uplinks through a real gateway (pipeline driven on this thread, each
    window scored as it comes due); returns the alerts it published."""
    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    config = validate_config({
        "gateway": {"id": "gw-feedback", "state_dir": str(state)},
        "profiles": [{"name": "cold-rooms", "match_name": "node-*", "codec": "cayenne_lpp",
                      "battery_field": "voltage_3", "expected_interval_s": 600}],
        "model": {"calibration_steps": CAL, "calibration_windows": CAL,
                  **({"path": str(model_path)} if model_path is not None else {})},
        "record": {"enabled": True},
        "metrics": {"listen": None},
    }, registry)
    alerts: list[Alert] = []
    gw = Gateway(config, pm, registry, on_alert=alerts.append)
    gw.start()
    pipeline = gw.pipeline
    assert pipeline is not None
    pipeline.stop()
    try:
        temp, hum = cold_room()
        topic = f"application/app-1/device/{DEVICE}/event/up"
        for k in range(ROWS):
            body = chirpstack_v4(DEVICE, START + k * INTERVAL, k, lpp(float(temp[k]), float(hum[k])))
            pipeline._handle(parse_uplink(topic, json.dumps(body).encode(), "chirpstack_v4"))
            pipeline._flush()
    finally:
        gw.stop()
    assert gw.metrics.get("alert_windows_dropped_total", reason="queue_full") == 0
    return alerts


def _row(alert: Alert) -> int:
    return round((alert.timestamp - START) / INTERVAL)


def raised_rows(alerts: list[Alert]) -> list[int]:
    return [_row(a) for a in alerts if a.kind == "anomaly" and a.state == "raised"]


def test_operator_feedback_trains_an_adapter_that_drops_the_false_alarm_and_keeps_the_fault(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    alerts = run_gateway(state)
    raised = [a for a in alerts if a.kind == "anomaly" and a.state == "raised"]
    defrosts = [CAL + 60 + 144 * i for i in range(5)]
    # the base model alarms on every defrost and on the fault
    assert [r for r in raised_rows(alerts) if r < FAULT[0]] and all(
        any(0 <= r - d < 12 for d in defrosts) for r in raised_rows(alerts) if r < FAULT[0]), raised_rows(alerts)
    assert any(FAULT[0] <= r < FAULT[1] for r in raised_rows(alerts))
    false_alarm = raised[0]
    fault = next(a for a in raised if FAULT[0] <= _row(a) < FAULT[1])

    # the daemon kept each alert's window and what followed, beside the feedback file
    records = [json.loads(line) for line in (state / WINDOWS_FILE).read_text().splitlines()]
    complete = {r["key"]: r for r in records if r.get("complete")}
    assert set(complete) == {a.key for a in raised}
    kept = complete[false_alarm.key]
    assert kept["device_id"] == DEVICE and kept["raise_row"] == 31 and len(kept["values"]) > 32
    assert kept["timestamps"][31] == false_alarm.timestamp

    # the operator's verdicts, by the CLI
    assert main(["alerts", "feedback", false_alarm.key, "false", "--state-dir", str(state), "--note", "defrost"]) == 0
    assert main(["alerts", "feedback", fault.key, "confirmed", "--state-dir", str(state)]) == 0
    marked = capsys.readouterr().out
    assert f"alert {false_alarm.key} marked false_alarm, with the {len(kept['values'])} readings" in marked
    verdicts = labelled_windows(state, CHANNELS.split(","), DEVICE)
    assert sorted(w.label for w in verdicts.windows) == ["confirmed", "false_alarm"] and verdicts.skipped == {}

    common = ["model", "finetune", "--data", str(state / "recordings"), "--channels", CHANNELS, "--device", DEVICE,
              "--feedback", str(state), "--no-progress"]
    # verdicts in the gate only: the adapter still fires on the false alarm and is refused
    rc = main([*common, "--out", str(tmp_path / "gate-only"), "--feedback-weight", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and f"still fires on alert {false_alarm.key} marked a false alarm" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "gate-only" / "manifest.json").exists()

    # verdicts in training: exported, with the verdicts' before/after in its manifest
    adapter = tmp_path / "adapter"
    assert main([*common, "--out", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert "operator verdicts: 1 false alarm(s), 1 confirmed used of 2" in out
    assert f"alert {false_alarm.key} (false_alarm)" in out and "fires yes -> no" in out
    manifest = json.loads((adapter / "manifest.json").read_text())
    fb = manifest["training"]["feedback"]
    assert fb["trained"] and fb["rows_marked_confirmed"] > 0 and fb["windows"]["false_alarm"] > 0
    gate = {v["key"]: v for v in manifest["evaluation"]["feedback_gate"]["verdicts"]}
    assert gate[false_alarm.key]["base"]["fires"] and not gate[false_alarm.key]["adapter"]["fires"]
    assert gate[false_alarm.key]["adapter"]["max_score"] < 1.0 <= gate[false_alarm.key]["base"]["max_score"]
    assert gate[fault.key]["adapter"]["fires"]

    # the merged adapter served by the same gateway over the same uplinks
    merged = tmp_path / "merged"
    assert main(["model", "export", "--adapter", str(adapter), "--merged", str(merged)]) == 0
    again = run_gateway(tmp_path / "state-adapted", merged)
    rows = raised_rows(again)
    assert not [r for r in rows if 0 <= r - _row(false_alarm) < 40], rows  # the marked false alarm is gone
    assert any(FAULT[0] <= r < FAULT[1] for r in rows), rows  # the confirmed fault still raises
    assert len([r for r in rows if r < FAULT[0]]) < len([r for r in raised_rows(alerts) if r < FAULT[0]])

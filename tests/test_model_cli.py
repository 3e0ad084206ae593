"""``lora-gateway model score`` / ``model eval`` on generated CSVs, and models.datasets."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from models.datasets import (
    DatasetError,
    labels_from_windows,
    load_csv,
    load_label_windows,
)
from models.synthetic import SENSOR_KINDS, Fault, generate_device

pytest.importorskip("onnxruntime")

NAB = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "nab"
CHANNELS = [*SENSOR_KINDS, "temperature_2"]  # 8 channels
ROWS, CAL = 3100, 2016  # 10-minute readings: 14 days of calibration, then 7.5 days


def write_csv(path: Path, decimal_comma: bool = False, seed: int = 4) -> np.ndarray:
    """Semicolon CSV, 8 numeric channels, a timestamp and a 0/1 label column; returns labels."""
    kinds = [*SENSOR_KINDS, "temperature"]
    faults = [
        Fault("level_shift", (0, 1), 2300, 2450, 4.0),
        Fault("dropout", (5,), 2600, 2640),
        Fault("stuck_at", (2,), 2800, 2880),
    ]
    dev = generate_device(seed, ROWS, kinds=kinds, interval_s=600, faults=faults)
    labels = dev.step_labels
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["time", *CHANNELS, "fault"])
        for i in range(len(labels)):
            ts = datetime.fromtimestamp(dev.timestamps[i], tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            vals = [f"{v:.3f}" for v in dev.values[i]]
            if decimal_comma:
                vals = [v.replace(".", ",") for v in vals]
            if i == 700:
                vals[3] = ""  # one missing reading
            w.writerow([ts, *vals, int(labels[i])])
    return labels


def test_load_csv_semicolon_8_channels_label(tmp_path: Path) -> None:
    labels = write_csv(tmp_path / "d.csv")
    t = load_csv(tmp_path / "d.csv", label_column="fault")
    assert t.delimiter == ";" and t.channels == CHANNELS and t.timestamp_column == "time"
    assert t.values.shape == (ROWS, 8) and np.isnan(t.values[700, 3]) and np.isfinite(t.values[701]).all()
    assert t.labels is not None and np.array_equal(t.labels, labels)
    assert t.timestamps[1] - t.timestamps[0] == 600.0
    sub = load_csv(tmp_path / "d.csv", channels=["current", "humidity"])
    assert sub.channels == ["current", "humidity"] and sub.labels is None
    assert np.array_equal(sub.values[:, 1], t.values[:, 1])


def test_load_csv_decimal_comma(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv")
    write_csv(tmp_path / "b.csv", decimal_comma=True)
    a, b = load_csv(tmp_path / "a.csv"), load_csv(tmp_path / "b.csv")
    assert np.allclose(a.values, b.values, equal_nan=True)
    # a label-like column is never a channel unless named (issue 11: a benchmark's
    # `changepoint` column was scored as a sensor)
    assert "fault" not in a.channels and a.excluded == ["fault"]
    assert load_csv(tmp_path / "a.csv", channels=["temperature", "fault"]).channels == ["temperature", "fault"]
    with_label = load_csv(tmp_path / "a.csv", label_column="fault")
    assert with_label.excluded == [] and with_label.channels == a.channels


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("", {}, "empty"),
        ("a,b\n1,2\n", {}, "at least 2 data rows"),
        ("1,2\n3,4\n5,6\n", {}, "header"),
        ("t,x\n2020-01-01,1\n2020-01-02,2\n", {"channels": ["y"]}, "no channel column 'y'"),
        ("t,x\n2020-01-01,1\n2020-01-02,oops\n", {"channels": ["x"]}, "not a number"),
        ("t,x,l\n2020-01-01,1,0\n2020-01-02,2,maybe\n", {"label_column": "l"}, "not a 0/1 label"),
        ("t,x\n2020-01-01,1\n2020-01-02,2,3\n", {}, "fields"),
        ("t,x\nnot-a-date,1\n2020-01-02,2\n", {"timestamp_column": "t"}, "cannot parse"),
        ("t;name\n2020-01-01;a\n2020-01-02;b\n", {}, "no numeric channel"),
    ],
)
def test_load_csv_errors_are_one_line_value_errors(tmp_path: Path, text: str, kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DatasetError, match=match) as info:
        load_csv(p, **kwargs)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_score_cli_writes_rows_scores_and_alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = write_csv(tmp_path / "d.csv")
    out = tmp_path / "scores.csv"
    rc = main(["model", "score", str(tmp_path / "d.csv"), "--label-column", "fault", "--calibration-rows", str(CAL), "--out", str(out)])
    assert rc == 0 and "alert rows" in capsys.readouterr().out
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == ROWS
    assert list(rows[0])[:7] == ["row", "timestamp", "score", "alert", "pca_score", "pca_alert", "label"]
    assert [k for k in rows[0] if k.startswith("score_")] == [f"score_{c}" for c in CHANNELS]
    assert rows[CAL - 1]["score"] == "" and rows[CAL]["score"] != ""
    alert = np.array([int(r["alert"]) for r in rows], dtype=bool)
    assert not alert[:CAL].any()
    assert alert[2304:2450].mean() > 0.95  # the 4-sigma shift, throughout
    assert alert[2820:2880].all()  # the stuck channel, once half a window is flat
    assert [int(r["label"]) for r in rows] == labels.astype(int).tolist()


def test_eval_cli_reports_metrics_json_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    write_csv(tmp_path / "d.csv")
    with_png = importlib.util.find_spec("matplotlib") is not None  # the report needs the [train] extra
    rc = main([
        "model", "eval", str(tmp_path / "d.csv"), "--label-column", "fault", "--calibration-rows", str(CAL),
        "--json", str(tmp_path / "m.json"), *(["--report", str(tmp_path / "r.png")] if with_png else []),
    ])
    text = capsys.readouterr().out
    assert rc == 0 and "PCA T2+Q baseline" in text and "false-alarm" in text and "no point adjustment" in text
    data = json.loads((tmp_path / "m.json").read_text())
    model = next(v for k, v in data["metrics"].items() if k != "PCA T2+Q baseline")
    pca = data["metrics"]["PCA T2+Q baseline"]
    assert set(model) >= {"precision", "recall", "f1", "false_alarm_rate", "missed_alarm_rate"}
    # measured: model precision 0.70, recall 0.94, false-alarm 0.14 (mostly the T rows after
    # each fault, still inside the window); PCA 0.69 / 0.68 / 0.10, 2 of 3 events
    assert model["recall"] > 0.85 and model["precision"] > 0.55 and model["false_alarm_rate"] < 0.25
    assert model["recall"] > pca["recall"] + 0.1
    assert model["events_detected"] == model["events"] == 3
    assert data["calibration_rows"] == CAL and len(data["channels"]) == 8
    if with_png:
        assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(tmp_path / "d.csv")
    assert main(["model", "score", str(tmp_path / "d.csv"), "--channels", "nope"]) == 1
    assert "no channel column 'nope'" in capsys.readouterr().err
    assert main(["model", "eval", str(tmp_path / "d.csv")]) == 1
    assert "--label-column or --windows" in capsys.readouterr().err
    assert main(["model", "score", str(tmp_path / "d.csv"), "--calibration-rows", "5"]) == 1
    assert "calibration rows" in capsys.readouterr().err
    assert main(["model", "score", str(tmp_path / "d.csv"), "--model", str(tmp_path)]) == 1
    assert "no manifest" in capsys.readouterr().err


@pytest.mark.skipif(not NAB.exists(), reason="NAB subset not present")
def test_nab_windows_label_rows_ends_included() -> None:
    data = NAB / "data" / "realKnownCause" / "machine_temperature_system_failure.csv"
    t = load_csv(data)
    windows = load_label_windows(NAB / "labels" / "combined_windows.json", data)
    assert len(windows) == 4 and len(t) == 22695 and t.channels == ["value"]
    y = labels_from_windows(t.timestamps, windows)
    start = datetime(2013, 12, 10, 6, 25, tzinfo=UTC).timestamp()
    assert y[np.flatnonzero(t.timestamps == start)].all()
    assert not y[np.flatnonzero(t.timestamps == start - 300)].any()
    assert int(y.sum()) == 4 * 567 + 0  # each window: 2 days minus 50 min at 5 min, ends included


def test_eval_record_writes_manifest_and_keeps_it_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from models.manifest import base_model_dir, load_manifest, verify_files

    model = tmp_path / "model"
    shutil.copytree(base_model_dir(), model)
    write_csv(tmp_path / "d.csv")
    rc = main(["model", "eval", str(tmp_path / "d.csv"), "--label-column", "fault", "--calibration-rows", str(CAL),
               "--model", str(model), "--record"])
    assert rc == 0 and "recorded in" in capsys.readouterr().out
    m = load_manifest(model)
    entry = m.evaluation[f"d.csv (calibration rows {CAL})"]
    assert entry["command"].endswith(f"--label-column fault --calibration-rows {CAL}")
    assert set(entry["metrics"]) == {f"{m.name} {m.version}", "PCA T2+Q baseline"}
    assert verify_files(m, model) == []


@pytest.mark.train
def test_pretrain_cli_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from models.manifest import load_manifest, verify_files

    assert main(["model", "pretrain", "--out", str(tmp_path / "m"), "--quick", "--steps", "120"]) == 0
    out = capsys.readouterr().out
    assert "onnx parity" in out and "LoRA-input graph model_lora.onnx" in out
    m = load_manifest(tmp_path / "m")
    assert m.training["recipe"]["steps"] == 120 and verify_files(m, tmp_path / "m") == []
    assert "model_lora.onnx" in m.files and m.extra["lora_graph"]["file"] == "model_lora.onnx"
    assert main(["model", "pretrain", "--out", str(tmp_path / "n"), "--steps", "0"]) == 1


def test_eval_folder_pools_counts_prints_target_and_states_settings(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A folder: every *.csv under it is one run (a row per file), metrics pooled over one
    confusion matrix; the declared false-alarm target is printed beside the achieved rate;
    the JSON holds the settings really used and the columns left out as labels."""
    runs = tmp_path / "runs"
    (runs / "b").mkdir(parents=True)
    write_csv(runs / "a.csv", seed=4)
    write_csv(runs / "b" / "c.csv", seed=5)
    rc = main(["model", "eval", str(runs), "--label-column", "fault", "--calibration-rows", str(CAL),
               "--json", str(tmp_path / "m.json")])
    text = capsys.readouterr().out
    assert rc == 0 and "a.csv:" in text and "b/c.csv:" in text and "pooled over 2 files" in text
    assert "false-alarm target: 0.01 % of normal windows" in text and "achieved:" in text
    data = json.loads((tmp_path / "m.json").read_text())
    assert [Path(f["file"]).name for f in data["files"]] == ["a.csv", "c.csv"]
    name = next(k for k in data["metrics"] if k != "PCA T2+Q baseline")
    for key in ("true_positives", "false_positives", "false_negatives", "true_negatives"):
        assert data["metrics"][name][key] == sum(f["metrics"][name][key] for f in data["files"])
    assert data["settings"]["false_alarm_target"] == data["false_alarm_target"] == 1e-4
    assert data["settings"]["level_follow"] == 1.0 and data["files"][0]["calibration_rows"] == CAL
    # the calibration really used is the --calibration-rows, not the manifest's daemon setting
    assert data["settings"]["calibration_steps"] == CAL and data["settings"]["calibration_windows"] == CAL - 31
    from importlib.metadata import version
    assert data["lora_gateway_version"] == version("lora-edge-gateway")
    assert 0.0 <= data["achieved"]["normal_windows_over_threshold"] <= 1.0
    assert main(["model", "eval", str(runs), "--label-column", "fault", "--record"]) == 1
    assert "take one file" in capsys.readouterr().err

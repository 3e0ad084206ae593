"""Labels as a training signal in site fine-tuning, and an 8-channel semicolon file through
finetune, export, score and eval by options alone (needs the [train] extra)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from train_fixtures import make_torch_base, write_site_csv  # noqa: E402

from gateway.cli import main  # noqa: E402
from models.finetune import finetune, load_peft, scorer_calibration_rows  # noqa: E402
from models.label_objective import device_windows, label_margin_loss, recency_weights  # noqa: E402
from models.site_data import load_site_data  # noqa: E402
from models.synthetic import generate_device  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_torch_base(tmp_path_factory.mktemp("base") / "base")


def test_device_windows_take_labelled_ends_and_clean_windows_and_skip_stuck_ones() -> None:
    rng = np.random.default_rng(0)
    L, C, T = 300, 2, 16
    z = rng.standard_normal((L, C)).astype(np.float32)
    labels = np.zeros(L, dtype=bool)
    labels[100:110] = True  # a noisy fault
    labels[200:240] = True
    z[200:240, 0] = z[199, 0]  # a stuck channel: the scorer's flatline check catches it
    missing = np.zeros((L, C), dtype=bool)
    anomalous, normal = device_windows(z, labels, missing, T, 10_000, rng)
    # flatline threshold 0.5 here: windows ending at e >= 207 repeat more than 7.5 of their 15 steps
    stuck_ends = np.arange(207, 240)
    assert len(anomalous) == 10 + 40 - len(stuck_ends)
    starts_clean = [s for s in range(L - T + 1) if not labels[s:s + T].any()]
    assert len(normal) == len(starts_clean)
    np.testing.assert_array_equal(normal[0], z[:T])
    assert anomalous.shape[1:] == (T, C) and normal.shape[1:] == (T, C)


def test_scorer_calibrates_on_the_normal_prefix_of_the_training_rows() -> None:
    labels = np.zeros(1000, dtype=bool)
    assert scorer_calibration_rows(labels, 750) == 750
    labels[600:620] = True
    assert scorer_calibration_rows(labels, 750) == 600  # faults must not calibrate the thresholds
    labels[100] = True
    assert scorer_calibration_rows(labels, 750) == 750  # too short a normal prefix: all training rows


def test_supervised_term_raises_the_labelled_windows_over_the_normal_ones(base: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "site.csv"
    labels = write_site_csv(csv_path, rows=1600, seed=4, n_faults=3)
    split = int(round(1600 * 0.75))
    assert labels[:split].any() and labels[split:].any()
    common = dict(channels=["temp_c", "rh"], timestamp_column="time", label_column="fault", epochs=6,
                  patience=6, rank=4, alpha=8, progress=False, label_margin=1000.0,
                  gate=False)  # the training mechanics; the export gate: tests/test_adapter_gate.py
    plain = finetune(base, csv_path, tmp_path / "plain", label_weight=0.0, **common)
    sup = finetune(base, csv_path, tmp_path / "sup", label_weight=1.0, **common)
    objective = sup.manifest["training"]["label_objective"]
    assert objective["used"] and objective["anomalous_windows"] >= 4
    assert not plain.manifest["training"]["label_objective"]["used"]
    assert all("label_loss" in h for h in sup.history)
    ev = sup.manifest["evaluation"]["supervised"]
    assert set(ev) >= {"base", "adapter", "pca", "calibration_rows"} and ev["calibration_rows"] <= split
    for key in ("base", "adapter", "pca"):  # only rows after the training rows are counted
        m = ev[key]
        assert m["true_positives"] + m["false_negatives"] == int(labels[split:].sum())
        assert m["true_positives"] + m["false_negatives"] + m["false_positives"] + m["true_negatives"] == 1600 - split
    # the labelled training windows, as finetune standardises them
    data = load_site_data(csv_path, ["temp_c", "rh"], "time", "fault")
    values = data.values
    normal_rows = ~labels[:split]
    z = ((values - values[:split][normal_rows].mean(0)) / values[:split][normal_rows].std(0)).astype(np.float32)
    a, n = device_windows(z[:split], labels[:split], np.zeros_like(z[:split], dtype=bool), 16, 10_000,
                          np.random.default_rng(0))
    w = recency_weights(16, 8.0)
    with torch.no_grad():  # a margin most labelled windows do not reach before training, so the term is active
        before = float(label_margin_loss(load_peft(base, tmp_path / "plain"), torch.from_numpy(a),
                                         torch.from_numpy(n), w, 1000.0))
        after = float(label_margin_loss(load_peft(base, tmp_path / "sup"), torch.from_numpy(a),
                                        torch.from_numpy(n), w, 1000.0))
    assert after < 0.8 * before, (before, after)


def _write_eight_channel_csv(path: Path, rows: int = 1400) -> np.ndarray:
    """8 numeric channels, ``;`` separated, decimal commas, a 0/1 ``label`` column."""
    a = generate_device(21, rows, kinds=("temperature", "humidity", "pressure", "current"), interval_s=60.0,
                        n_faults=3, fault_free_prefix=rows // 2)
    b = generate_device(22, rows, kinds=("vibration", "current", "temperature", "battery"), interval_s=60.0)
    values = np.concatenate([a.values, b.values], axis=1)
    labels = np.asarray(a.step_labels, dtype=bool)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["zeit", *[f"s{i}" for i in range(8)], "label"])
        for i in range(rows):
            writer.writerow([f"{a.timestamps[i]:.0f}", *[f"{v:.4f}".replace(".", ",") for v in values[i]],
                             int(labels[i])])
    return labels


def test_eight_channel_semicolon_file_through_finetune_export_score_eval(
        base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "plant.csv"
    labels = _write_eight_channel_csv(data)
    channels = ",".join(f"s{i}" for i in range(8))
    adapter, merged = tmp_path / "plant-adapter", tmp_path / "plant-merged"
    assert main(["model", "finetune", "--base", str(base), "--data", str(data), "--channels", channels,
                 "--timestamp-column", "zeit", "--label-column", "label", "--out", str(adapter),
                 "--name", "plant", "--epochs", "3", "--rank", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "validation detection (point-wise)" in out
    assert main(["model", "export", "--base", str(base), "--adapter", str(adapter), "--merged", str(merged)]) == 0
    capsys.readouterr()
    scores = tmp_path / "scores.csv"
    assert main(["model", "score", str(data), "--model", str(merged), "--channels", channels,
                 "--timestamp-column", "zeit", "--label-column", "label", "--calibration-rows", "600",
                 "--out", str(scores)]) == 0
    with open(scores) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(labels) and [k for k in rows[0] if k.startswith("score_")] == [f"score_s{i}" for i in range(8)]
    report = tmp_path / "eval.json"
    assert main(["model", "eval", str(data), "--model", str(merged), "--label-column", "label",
                 "--timestamp-column", "zeit", "--calibration-rows", "600", "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    evaluated_faulty = int(labels[600:].sum())
    for m in metrics.values():
        assert m["true_positives"] + m["false_negatives"] == evaluated_faulty
    assert json.loads(report.read_text())["channels"] == [f"s{i}" for i in range(8)]

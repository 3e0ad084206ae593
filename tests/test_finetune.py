"""Site fine-tuning with LoRA on generated site data (needs the [train] extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("torch")
pytest.importorskip("peft")

from train_fixtures import make_torch_base, write_site_csv  # noqa: E402

from gateway.cli import main  # noqa: E402
from models import integrity  # noqa: E402
from models.finetune import finetune  # noqa: E402
from models.site_data import SiteData, SiteDataError  # noqa: E402
from models.store import ModelStore  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_torch_base(tmp_path_factory.mktemp("base") / "base")


def test_finetune_lowers_validation_loss(base: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "site.csv"
    labels = write_site_csv(csv_path)
    out = tmp_path / "adapter"
    result = finetune(base, csv_path, out, channels=["temp_c", "rh"], timestamp_column="time",
                      label_column="fault", epochs=10, patience=3, rank=4, alpha=8, progress=False, gate=False)
    assert result.val_loss_after < 0.8 * result.val_loss_before, (result.val_loss_before, result.val_loss_after)
    assert 1 <= result.best_epoch <= result.epochs_run <= 10
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                    "manifest.json"]
    manifest = integrity.load_manifest(out)
    integrity.verify_dir(out, manifest)
    training = manifest["training"]
    assert manifest["kind"] == "adapter"
    assert manifest["base_sha256"] == integrity.sha256_file(base / "model.safetensors")
    assert training["rows"] == len(labels) and training["channels"] == ["temp_c", "rh"]
    assert training["data_sha256"] == integrity.sha256_file(csv_path)
    assert training["split"]["train_rows"] + training["split"]["val_rows"] == len(labels)
    ev = manifest["evaluation"]
    assert ev["val_loss_before"] == pytest.approx(result.val_loss_before, abs=1e-6)
    sup = ev["supervised"]
    assert set(sup["base"]) >= {"precision", "recall", "f1", "false_alarm_rate"}
    val_faulty = int(labels[training["split"]["train_rows"]:].sum())
    assert sup["adapter"]["true_positives"] + sup["adapter"]["false_negatives"] == val_faulty
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"


def test_anomalous_rows_are_left_out_of_training(base: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = 600
    values = rng.standard_normal((rows, 1))
    labels = np.zeros(rows, dtype=bool)
    labels[100:400] = True  # half the training part is labelled anomalous
    data = SiteData(values=values, timestamps=np.arange(rows) * 60.0, channels=["x"], labels=labels)
    result = finetune(base, data, tmp_path / "a", epochs=1, progress=False, supervised_metrics=False)
    split = result.manifest["training"]["split"]["train_rows"]
    T = result.manifest["window_length"]
    # one channel, stride 1: only windows inside the normal rows [0, 100) and [400, split)
    assert result.manifest["training"]["train_windows"] == (100 - T + 1) + (split - 400 - T + 1)
    with pytest.raises(SiteDataError, match="normal rows"):
        finetune(base, SiteData(values=values, timestamps=np.arange(rows) * 60.0, channels=["x"],
                                labels=np.ones(rows, dtype=bool)), tmp_path / "b", epochs=1, progress=False)


def test_unusable_data_is_a_clear_error(base: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("timestamp,a\n" + "".join(f"{i},{i}\n" for i in range(20)))
    with pytest.raises(SiteDataError, match="too few"):
        finetune(base, short, tmp_path / "o", channels=["a"], progress=False)
    with pytest.raises(SiteDataError, match="no column"):
        finetune(base, short, tmp_path / "o", channels=["b"], progress=False)


def test_finetune_cli_then_install(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "site.csv"
    write_site_csv(csv_path, rows=900, n_faults=0)
    out = tmp_path / "adapter"
    rc = main(["model", "finetune", "--base", str(base), "--data", str(csv_path), "--channels", "temp_c,rh",
               "--timestamp-column", "time", "--out", str(out), "--epochs", "3", "--rank", "2",
               "--name", "site-a", "--no-progress", "--skip-gate"])
    # --skip-gate: this 3-epoch rank-2 adapter raises its normal validation rows' scores at
    # every strength (mean log-score -0.974 -> -0.902 at 1; no alarm with either model), so
    # the gate refuses it (issue 11 point 3); this test is about the CLI and the store
    assert rc == 0
    assert "validation loss" in capsys.readouterr().out
    store = ModelStore(tmp_path / "store")
    store.install(base)
    installed = store.install(out)
    assert installed.ref == "site-a@1" and installed.kind == "adapter"
    assert main(["model", "finetune", "--base", str(base), "--data", str(tmp_path / "nope.csv"),
                 "--channels", "a", "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_finetune_accepts_plain_arrays(base: Path, tmp_path: Path) -> None:
    t = np.arange(800)
    values = np.stack([np.sin(2 * np.pi * t / 10), np.cos(2 * np.pi * t / 7)], axis=1)
    result = finetune(base, values, tmp_path / "a", epochs=4, progress=False, max_windows=400)
    assert result.manifest["training"]["channels"] == ["ch0", "ch1"]
    assert result.manifest["training"]["train_windows"] == 400 and result.manifest["evaluation"]["val_windows"] == 100
    assert result.val_loss_after < result.val_loss_before

"""``model finetune`` refuses an adapter that would raise a site's false alarms (issue 11),
and trains on the leading rows only with ``--train-rows`` (needs the [train] extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("torch")
pytest.importorskip("peft")

from train_fixtures import make_torch_base, write_site_csv  # noqa: E402

from gateway.cli import main  # noqa: E402
from models.adapter_gate import LOG_SCORE_MARGIN  # noqa: E402
from models.finetune import AdapterRejected, finetune  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_torch_base(tmp_path_factory.mktemp("base") / "base")


def test_adapter_that_raises_false_alarms_is_not_exported(base: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The site of test_finetune_lowers_validation_loss, with the recipe before issue 11 point 3
    (no level augmentation, no anchor): the adapter lowers the validation reconstruction loss,
    but with the scorer calibrated on the rows it learnt (what a device serving it meets) its
    validation rows alarm more (measured 0.2355 -> 0.2389): at full strength only
    (``strengths=(1.0,)``, ``--strengths 1``) it is refused, nothing written, one line saying
    why. Before the gate it was exported. (This test used the current recipe until
    bench/RESULTS.md 26: its 0.2355 -> 0.2389 came from ``model score`` updating the level
    hold and the adaptation per block of 64 windows; scored as the daemon scores, the current
    recipe's adapter does not raise the false alarms, see the next test.)"""
    csv_path = tmp_path / "site.csv"
    write_site_csv(csv_path)
    out = tmp_path / "adapter"
    common = dict(channels=["temp_c", "rh"], timestamp_column="time", label_column="fault", epochs=10, patience=3,
                  rank=4, alpha=8, progress=False, level_shift=0.0, anchor_weight=0.0)
    with pytest.raises(AdapterRejected, match="at strength 1 it raises the false-alarm rate on its validation rows"):
        finetune(base, csv_path, out, strengths=(1.0,), **common)
    assert not (out / "adapter_model.safetensors").exists() and not (out / "manifest.json").exists()
    rc = main(["model", "finetune", "--base", str(base), "--data", str(csv_path), "--channels", "temp_c,rh",
               "--timestamp-column", "time", "--label-column", "fault", "--out", str(out), "--epochs", "10",
               "--patience", "3", "--rank", "4", "--alpha", "8", "--no-progress", "--strengths", "1",
               "--level-shift", "0", "--anchor-weight", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "adapter not exported" in err and len(err.strip().splitlines()) == 1
    assert not (out / "adapter_model.safetensors").exists()


def test_site_adapter_that_passes_is_exported_and_the_old_recipe_is_not(base: Path, tmp_path: Path) -> None:
    """The same site with the default strengths (1, 0.5, 0.25) and the current recipe: at 1 the
    false alarms do not rise (0.2355 both) and recall rises (0.804 -> 0.888, measured):
    exported at 1, the try in the manifest. (Until bench/RESULTS.md 26, ``model score``'s
    per-block hold and adaptation put strength 1 at 0.2389 and exported 0.5.) With the recipe
    before issue 11 point 3 (no level augmentation, no anchor) every strength raises the false
    alarms: refused, one line naming each strength."""
    csv_path = tmp_path / "site.csv"
    write_site_csv(csv_path)
    common = dict(channels=["temp_c", "rh"], timestamp_column="time", label_column="fault", epochs=10, patience=3,
                  rank=4, alpha=8, progress=False)
    result = finetune(base, csv_path, tmp_path / "a", **common)
    gate = result.manifest["evaluation"]["gate"]
    assert result.manifest["lora"]["strength"] == gate["strength"] == 1.0
    assert [t["strength"] for t in gate["tried"]] == [1.0] and gate["tried"][0]["reasons"] == []
    b, a = gate["base"], gate["adapter"]
    assert a["false_alarm_rate"] <= b["false_alarm_rate"] and a["recall"] > b["recall"]
    with pytest.raises(AdapterRejected) as refused:
        finetune(base, csv_path, tmp_path / "b", level_shift=0.0, anchor_weight=0.0, **common)
    message = str(refused.value)
    assert "\n" not in message and all(f"at strength {s} it raises the false-alarm rate" in message
                                       for s in ("1", "0.5", "0.25"))
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_the_first_strength_that_passes_is_kept() -> None:
    """``choose_strength`` tries the strengths strongest first and leaves the adapter at the
    first one whose gates pass (here 0.5), each try recorded; none passing: refused, back at 1."""
    import torch

    from models.adapter_gate import choose_strength

    model = torch.nn.Module()
    model.lora_B = torch.nn.Parameter(torch.ones(2))

    def check() -> tuple[list[str], dict[str, float]]:
        s = float(model.lora_B.detach()[0])
        return ([] if s <= 0.5 else [f"fails at {s:g}"]), {"strength": s}

    strength, report, tried = choose_strength(model, (1.0, 0.5, 0.25), check)
    assert strength == 0.5 and report == {"strength": 0.5} and float(model.lora_B.detach()[0]) == 0.5
    assert tried == [{"strength": 1.0, "reasons": ["fails at 1"]}, {"strength": 0.5, "reasons": []}]
    with torch.no_grad():
        model.lora_B.fill_(1.0)
    with pytest.raises(AdapterRejected, match="at strength 1 it fails at 1; at strength 0.75 it fails at 0.75"):
        choose_strength(model, (1.0, 0.75), check)
    assert float(model.lora_B.detach()[0]) == 1.0


def test_strength_scales_the_adapter_delta(base: Path, tmp_path: Path) -> None:
    """Strength 0 is the base exactly, 1 the trained adapter, and the delta is linear in between."""
    import torch

    from models.adapter_gate import lora_deltas, set_strength
    from models.architecture import load_model
    from models.finetune import load_peft

    t = np.arange(800)
    values = np.stack([np.sin(2 * np.pi * t / 10), np.cos(2 * np.pi * t / 7)], axis=1)
    finetune(base, values, tmp_path / "a", epochs=3, progress=False, max_windows=400, gate=False)
    model = load_peft(base, tmp_path / "a")
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((16, 16, 1)).astype(np.float32))
    with torch.no_grad():
        plain = load_model(base)(x)[0]
        full = model(x)[0]
        trained = lora_deltas(model)
        set_strength(model, trained, 0.0)
        none = model(x)[0]
        set_strength(model, trained, 0.5)
        half = model(x)[0]
    assert torch.allclose(none, plain, atol=1e-6) and not torch.allclose(full, plain, atol=1e-4)
    # each layer's delta halves; through the network the output moves part way, not past either end
    assert float(torch.mean((half - plain) ** 2)) < float(torch.mean((full - plain) ** 2))


def test_adapter_that_does_no_harm_is_exported_with_its_gate_figures(base: Path, tmp_path: Path) -> None:
    """No alarm on the validation rows with either model, so the scores' distribution decides:
    at full strength the adapter raises the mean log-score of the normal validation rows by
    0.041 (refused), at 0.5 by 0.005, within the margin (measured): exported at 0.5."""
    t = np.arange(800)
    values = np.stack([np.sin(2 * np.pi * t / 10), np.cos(2 * np.pi * t / 7)], axis=1)
    result = finetune(base, values, tmp_path / "a", epochs=4, progress=False, max_windows=400)
    gate = result.manifest["evaluation"]["gate"]
    assert gate["passed"] and gate["reasons"] == [] and gate["calibration_rows"] == 600
    assert gate["adapter"]["false_alarm_rate"] <= gate["base"]["false_alarm_rate"]
    assert gate["base"]["recall"] is None  # no labelled rows to measure recall on
    assert gate["strength"] == 0.5 and "raises the normal validation rows' scores" in gate["tried"][0]["reasons"][0]
    assert gate["adapter"]["log_score"] <= gate["base"]["log_score"] + LOG_SCORE_MARGIN
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()


def test_train_rows_uses_the_leading_rows_only(base: Path, tmp_path: Path) -> None:
    t = np.arange(1500)
    values = np.stack([np.sin(2 * np.pi * t / 10), np.cos(2 * np.pi * t / 7)], axis=1)
    values[600:] += 50.0  # never seen: the adapter trains and validates on the first 400 rows
    result = finetune(base, values, tmp_path / "a", epochs=2, progress=False, train_rows=400, gate=False)
    training = result.manifest["training"]
    assert training["rows"] == 400 and training["split"] == {"train_rows": 300, "val_rows": 100, "order": "time",
                                                             "leading_rows_used": 400}
    assert "trained on the leading 400 of 1500 rows" in training["data_notes"]
    assert max(training["standardisation"]["mean"]) < 1.0
    with pytest.raises(ValueError, match="--train-rows must be at least"):
        finetune(base, values, tmp_path / "b", epochs=1, progress=False, train_rows=10)

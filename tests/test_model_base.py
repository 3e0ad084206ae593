"""The shipped base model (models/base): manifest, hashes, ONNX contract, behaviour; and
the pretraining recipe (quick run) with its ONNX parity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.manifest import (
    Manifest,
    ManifestError,
    base_model_dir,
    load_manifest,
    sha256_file,
    verify_files,
    write_manifest,
)
from models.synthetic import Fault, generate_device, normal_windows, standardize_series

ort = pytest.importorskip("onnxruntime")

BASE = base_model_dir()


# `manifest` and `session` (the bundled base) come from tests/conftest.py


def test_manifest_lists_and_hashes_every_file(manifest: Manifest) -> None:
    assert set(manifest.files) == {"model.safetensors", "config.json", "model.onnx", "model_lora.onnx"}
    assert verify_files(manifest, BASE) == []
    assert manifest.files["model.onnx"] == sha256_file(BASE / "model.onnx")
    lora = manifest.extra["lora_graph"]
    assert lora["file"] == "model_lora.onnx" and lora["targets"] == manifest.lora_targets
    assert lora["parity_no_adapter_max_abs_diff"] < lora["parity_tolerance"]
    assert manifest.channel_independent is True and manifest.base_model is None
    assert manifest.window_length == json.loads((BASE / "config.json").read_text())["window_length"]
    assert manifest.lora_targets and manifest.export["parity_max_abs_diff"] < manifest.export["parity_tolerance"]
    assert manifest.training["recipe"]["seed"] == 20261122 and manifest.training["recipe"]["steps"] >= 1000
    assert manifest.training["loss_last_5pct"] < 0.2 * manifest.training["loss_first_5pct"]


def test_verify_detects_tampering(tmp_path: Path, manifest: Manifest) -> None:
    for name in manifest.files:
        (tmp_path / name).write_bytes((BASE / name).read_bytes())
    assert verify_files(manifest, tmp_path) == []
    data = bytearray((tmp_path / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    (tmp_path / "config.json").unlink()
    problems = verify_files(manifest, tmp_path)
    assert any(p.startswith("model.onnx: sha256") for p in problems) and "config.json: missing" in problems


def test_manifest_roundtrip_keeps_unknown_keys_and_rejects_malformed(tmp_path: Path, manifest: Manifest) -> None:
    data = manifest.to_dict()
    data["adapter_history"] = [1, 2]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    again = load_manifest(tmp_path)
    assert again.extra["adapter_history"] == [1, 2] and again.files == manifest.files
    write_manifest(again, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["adapter_history"] == [1, 2]
    for bad in ("[]", "{", json.dumps({"name": "x"}), json.dumps({**data, "window_length": 0})):
        (tmp_path / "manifest.json").write_text(bad)
        with pytest.raises(ManifestError):
            load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(tmp_path / "nowhere")


def test_onnx_io_names_and_declared_shapes(session, manifest: Manifest) -> None:  # type: ignore[no-untyped-def]
    (inp,) = session.get_inputs()
    assert inp.name == "window" and inp.type == "tensor(float)"
    assert inp.shape[1] == manifest.window_length and isinstance(inp.shape[0], str) and isinstance(inp.shape[2], str)
    assert [o.name for o in session.get_outputs()] == [o.name for o in manifest.outputs]
    t, d = manifest.window_length, manifest.embedding_dim
    rng = np.random.default_rng(0)
    for n, c in ((1, 1), (7, 2), (64, 5), (3, 8), (2, 13)):
        rec, emb = session.run(None, {"window": rng.normal(size=(n, t, c)).astype(np.float32)})
        assert rec.shape == (n, t, c) and emb.shape == (n, c, d)
        assert rec.dtype == np.float32 and np.isfinite(rec).all() and np.isfinite(emb).all()


def test_channel_independent_flattening_gives_same_outputs(session, manifest: Manifest) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(1).normal(size=(6, manifest.window_length, 4)).astype(np.float32)
    rec, emb = session.run(None, {"window": x})
    flat = np.ascontiguousarray(x.transpose(0, 2, 1).reshape(24, manifest.window_length, 1))
    rec1, emb1 = session.run(None, {"window": flat})
    assert np.allclose(rec1.reshape(6, 4, -1).transpose(0, 2, 1), rec, atol=1e-5)
    assert np.allclose(emb1.reshape(6, 4, -1), emb, atol=1e-5)


def _windows(z: np.ndarray, ends: range, t: int) -> np.ndarray:
    return np.stack([z[e - t + 1 : e + 1] for e in ends]).astype(np.float32)


def test_reconstruction_better_on_normal_than_on_faulty(session, manifest: Manifest) -> None:  # type: ignore[no-untyped-def]
    """Held-out generated devices: median squared error on normal windows vs windows that lie
    inside a fault. Measured: normal about 0.005; dropout, saturation, level shift 0.5 to 800."""
    t = manifest.window_length
    normal = normal_windows(99, 2000, t)[:, :, None]
    rec, _ = session.run(None, {"window": normal})
    err_normal = float(np.median(np.mean((rec - normal) ** 2, axis=(1, 2))))
    assert err_normal < 0.03
    for kind, size in (("dropout", 0.0), ("saturation", 0.0), ("level_shift", 5.0), ("spikes", 8.0)):
        dev = generate_device(7, 1500, kinds=("temperature", "soil_moisture", "current"), events=False,
                              faults=[Fault(kind, (1,), 1000, 1100, size)])
        z = standardize_series(dev.values, calibration_steps=900)[:, 1:2]
        x = _windows(z, range(1000 + t - 1, 1100), t)
        rec, _ = session.run(None, {"window": x})
        err = float(np.median(np.mean((rec - x) ** 2, axis=(1, 2))))
        assert err > 10 * err_normal, (kind, err, err_normal)


def test_embedding_moves_with_a_sustained_shift(session, manifest: Manifest) -> None:  # type: ignore[no-untyped-def]
    t = manifest.window_length
    x = normal_windows(5, 500, t)[:, :, None]
    _, e0 = session.run(None, {"window": x})
    _, e1 = session.run(None, {"window": x + 4.0})
    spread = float(np.linalg.norm(e0 - e0.mean(axis=0), axis=2).mean())
    moved = float(np.linalg.norm(e1 - e0, axis=2).mean())
    assert moved > 2 * spread


# --- torch side (the [train] extra) -----------------------------------------------------


@pytest.mark.train
def test_torch_weights_match_onnx_and_lora_targets_are_linear(manifest: Manifest) -> None:
    torch = pytest.importorskip("torch")
    from models.architecture import LORA_TARGETS, load_model
    from models.export import check_parity

    model = load_model(BASE)
    modules = dict(model.named_modules())
    assert list(LORA_TARGETS) == manifest.lora_targets
    assert all(isinstance(modules[name], torch.nn.Linear) for name in manifest.lora_targets)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules.values())
    assert sum(p.numel() for p in model.parameters()) == manifest.training["parameters"]
    assert check_parity(model, BASE / "model.onnx", normal_windows(11, 480, manifest.window_length)) < 1e-4


@pytest.mark.train
def test_peft_can_wrap_the_lora_targets(manifest: Manifest) -> None:
    pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import torch

    from models.architecture import load_model

    model = load_model(BASE)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=manifest.lora_targets))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * len(manifest.lora_targets)
    x = torch.from_numpy(normal_windows(3, 8, manifest.window_length)[:, :, None])
    with torch.no_grad():
        a = lora(x)[0]
        b = model.base_model if hasattr(model, "base_model") else model
    assert a.shape == x.shape and b is not None


@pytest.mark.train
def test_quick_pretrain_lowers_loss_exports_with_parity_and_reproduces(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from models.training.pretrain import Recipe, pretrain

    recipe = Recipe(steps=150, train_windows=8000)
    m1 = pretrain(tmp_path / "a", recipe=recipe)
    assert m1.training["loss_last_5pct"] < 0.5 * m1.training["loss_first_5pct"]
    assert m1.export["parity_max_abs_diff"] < 1e-4
    assert verify_files(load_manifest(tmp_path / "a"), tmp_path / "a") == []
    assert set(m1.files) == {"model.safetensors", "config.json", "model.onnx", "model_lora.onnx"}
    assert m1.extra["lora_graph"]["parity_no_adapter_max_abs_diff"] < 1e-4
    m2 = pretrain(tmp_path / "b", recipe=recipe)
    assert m2.files == m1.files  # every file, the LoRA-input graph included, byte for byte
    m3 = pretrain(tmp_path / "c", recipe=recipe, seed=5, lora_graph=False)
    assert m3.files["model.safetensors"] != m1.files["model.safetensors"] and "model_lora.onnx" not in m3.files


@pytest.mark.train
def test_shipped_graph_is_exported_from_the_shipped_weights(tmp_path: Path, manifest: Manifest) -> None:
    """Exporting the shipped weights again (the export step of `model pretrain`) rewrites the
    shipped model.onnx byte for byte, in any checkout: no node carries torch's stack traces."""
    pytest.importorskip("torch")
    from models.architecture import load_model
    from models.export import export_onnx

    export_onnx(load_model(BASE), tmp_path / "model.onnx", manifest.window_length)
    assert b"/models/architecture.py" not in (tmp_path / "model.onnx").read_bytes()
    assert sha256_file(tmp_path / "model.onnx") == manifest.files["model.onnx"], (
        "models/base/model.onnx is stale or was exported with node metadata")


@pytest.mark.train
def test_shipped_lora_graph_is_derived_from_the_shipped_weights(tmp_path: Path, manifest: Manifest) -> None:
    """`lora-gateway model export --lora-graph` on the shipped weights rewrites the shipped
    model_lora.onnx byte for byte (the step `model pretrain` runs last), and the graph with
    no adapter is the base model."""
    pytest.importorskip("peft")
    from models.adapters import export_lora_graph

    copy = tmp_path / "base"
    copy.mkdir()
    for name in ("model.safetensors", "config.json", "model.onnx", "manifest.json"):
        (copy / name).write_bytes((BASE / name).read_bytes())
    data = json.loads((copy / "manifest.json").read_text())
    data["files"].pop("model_lora.onnx")
    data.pop("lora_graph")
    (copy / "manifest.json").write_text(json.dumps(data))
    again = export_lora_graph(copy)
    # byte for byte in any checkout: the exporter drops torch's per-node stack traces (they
    # hold the checkout's absolute path; models.export.strip_node_metadata)
    assert (copy / "model_lora.onnx").read_bytes() == (BASE / "model_lora.onnx").read_bytes(), (
        "models/base/model_lora.onnx is stale: lora-gateway model export --base models/base --lora-graph")
    assert again["files"] == manifest.files
    plain = ort.InferenceSession(str(BASE / "model.onnx"), providers=["CPUExecutionProvider"])
    lora = ort.InferenceSession(str(BASE / "model_lora.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in lora.get_inputs()] == ["window"]
    assert sorted(i.name for i in lora.get_overridable_initializers()) == manifest.extra["lora_graph"]["inputs"]
    x = np.random.default_rng(3).standard_normal((5, manifest.window_length, 4)).astype(np.float32)
    for a, b in zip(plain.run(None, {"window": x}), lora.run(None, {"window": x})):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.train
def test_parity_check_refuses_a_graph_that_differs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from models.architecture import PatchAEConfig, PatchAutoencoder, load_model
    from models.export import ParityError, check_parity, export_onnx

    cfg = PatchAEConfig()
    torch.manual_seed(0)
    other = PatchAutoencoder(cfg)
    export_onnx(other, tmp_path / "other.onnx", cfg.window_length)
    windows = normal_windows(2, 96, cfg.window_length)
    assert check_parity(other, tmp_path / "other.onnx", windows) < 1e-4
    with pytest.raises(ParityError):
        check_parity(load_model(BASE), tmp_path / "other.onnx", windows)


@pytest.mark.train
@pytest.mark.slow
def test_full_recipe_reproduces_the_shipped_weights(tmp_path: Path, manifest: Manifest) -> None:
    """About a minute on 2 cores: runs only with LORA_GATEWAY_SLOW_TESTS=1."""
    import os

    if os.environ.get("LORA_GATEWAY_SLOW_TESTS") != "1":
        pytest.skip("set LORA_GATEWAY_SLOW_TESTS=1 to retrain the shipped model (about a minute)")
    pytest.importorskip("torch")
    from models.training.pretrain import pretrain

    again = pretrain(tmp_path / "m")
    assert again.files == manifest.files

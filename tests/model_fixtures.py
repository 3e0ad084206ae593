"""Tiny real model directories for store and runtime tests (numpy + onnx helper, no torch).

The model is a linear channel-independent autoencoder honouring the gateway's contract:

    x = transpose(window)            [N, C, T]
    embedding = x @ enc.weight^T     [N, C, D]      (enc.weight is [D, T], nn.Linear layout)
    reconstruction = transpose(embedding @ dec.weight^T)   [N, T, C]  (dec.weight is [T, D])

Its LoRA-input graph adds ``(x @ A^T) @ B^T`` to the encoder, with A ``[r, T]`` and B
``[D, r]`` as overridable initializers named like PEFT's keys, defaulting to empty
``[0, T]`` / ``[D, 0]`` tensors, so a run with no adapter is exactly the base.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from models import integrity  # noqa: E402

T = 8
D = 3
A_KEY = "base_model.model.enc.lora_A.weight"
B_KEY = "base_model.model.enc.lora_B.weight"


def _graph(enc: np.ndarray, dec: np.ndarray, lora: bool, t_in: int = T) -> onnx.ModelProto:
    window = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", t_in, "C"])
    rec = helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["N", t_in, "C"])
    emb = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", "C", D])
    inits = [numpy_helper.from_array(enc.T.copy(), "enc_t"), numpy_helper.from_array(dec.T.copy(), "dec_t")]
    nodes = [
        helper.make_node("Transpose", ["window"], ["x"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "enc_t"], ["h0"]),
    ]
    inputs = [window]
    if lora:
        inits += [numpy_helper.from_array(np.zeros((0, t_in), np.float32), A_KEY),
                  numpy_helper.from_array(np.zeros((D, 0), np.float32), B_KEY)]
        nodes += [
            helper.make_node("Transpose", [A_KEY], ["a_t"], perm=[1, 0]),
            helper.make_node("Transpose", [B_KEY], ["b_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "a_t"], ["xa"]),
            helper.make_node("MatMul", ["xa", "b_t"], ["xab"]),
            helper.make_node("Add", ["h0", "xab"], ["embedding"]),
        ]
        # overridable initializers: listed as graph inputs with a default, of symbolic rank
        inputs += [helper.make_tensor_value_info(A_KEY, TensorProto.FLOAT, ["r", t_in]),
                   helper.make_tensor_value_info(B_KEY, TensorProto.FLOAT, [D, "r"])]
    else:
        nodes.append(helper.make_node("Identity", ["h0"], ["embedding"]))
    nodes += [helper.make_node("MatMul", ["embedding", "dec_t"], ["y"]),
              helper.make_node("Transpose", ["y"], ["reconstruction"], perm=[0, 2, 1])]
    graph = helper.make_graph(nodes, "tiny_ae", inputs, [rec, emb], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_base(directory: Path, seed: int = 0, name: str = "tiny", version: str = "1",
              lora_graph: bool = True, t_in: int = T, nan_weights: bool = False) -> Path:
    """Write a complete base model directory (weights, ONNX, LoRA-input graph, manifest).

    ``t_in`` != T writes a graph whose input length differs from the manifest's;
    ``nan_weights`` writes a model that loads but produces NaN (fails warm-up).
    """
    rng = np.random.default_rng(seed)
    enc = rng.standard_normal((D, t_in)).astype(np.float32) * 0.3
    if nan_weights:
        enc[0, 0] = np.nan
    dec = rng.standard_normal((t_in, D)).astype(np.float32) * 0.3
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"enc.weight": enc, "dec.weight": dec}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"window_length": T, "embedding_dim": D}))
    onnx.save(_graph(enc, dec, lora=False, t_in=t_in), str(directory / "model.onnx"))
    manifest = {
        "name": name, "version": version, "kind": "base", "window_length": T,
        "inputs": [{"name": "window", "shape": ["N", T, "C"], "dtype": "float32"}],
        "outputs": [{"name": "reconstruction", "shape": ["N", T, "C"], "dtype": "float32"},
                    {"name": "embedding", "shape": ["N", "C", D], "dtype": "float32"}],
        "lora_targets": ["enc"],
    }
    if lora_graph:
        onnx.save(_graph(enc, dec, lora=True, t_in=t_in), str(directory / "model_lora.onnx"))
        manifest["lora_graph"] = {"file": "model_lora.onnx"}
    integrity.write_manifest(directory, manifest)
    return directory


def make_adapter(directory: Path, base_dir: Path, seed: int = 1, rank: int = 2, name: str = "site",
                 version: str = "1", t_in: int = T, onnx_adapter: bool = True) -> Path:
    """Write an adapter directory for base_dir: PEFT files, an .onnx_adapter and a manifest."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rank, t_in)).astype(np.float32) * 0.5
    b = rng.standard_normal((D, rank)).astype(np.float32) * 0.5
    directory.mkdir(parents=True, exist_ok=True)
    save_file({A_KEY: a, B_KEY: b}, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["enc"]}))
    if onnx_adapter:
        fmt = ort.AdapterFormat()
        fmt.set_parameters({A_KEY: ort.OrtValue.ortvalue_from_numpy(a), B_KEY: ort.OrtValue.ortvalue_from_numpy(b)})
        fmt.export_adapter(str(directory / f"{name}.onnx_adapter"))
    base_manifest = integrity.load_manifest(base_dir)
    integrity.write_manifest(directory, {
        "name": name, "version": version, "kind": "adapter", "window_length": T,
        "inputs": base_manifest["inputs"], "outputs": base_manifest["outputs"],
        "base_model": f"{base_manifest['name']}@{base_manifest['version']}",
        "base_sha256": integrity.sha256_file(base_dir / "model.safetensors"),
        "lora": {"r": rank, "alpha": rank, "target_modules": ["enc"]},
    })
    return directory


def reference(base_dir: Path, window: np.ndarray, adapter_dir: Path | None = None) -> dict[str, np.ndarray]:
    """The model computed in numpy from the safetensors files (the ground truth)."""
    from safetensors.numpy import load_file

    w = load_file(str(base_dir / "model.safetensors"))
    enc = w["enc.weight"]
    if adapter_dir is not None:
        lw = load_file(str(adapter_dir / "adapter_model.safetensors"))
        enc = enc + lw[B_KEY] @ lw[A_KEY]
    x = window.transpose(0, 2, 1)
    emb = x @ enc.T
    return {"embedding": emb, "reconstruction": (emb @ w["dec.weight"].T).transpose(0, 2, 1)}

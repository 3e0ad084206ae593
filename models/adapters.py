"""Exporting LoRA adapters for ONNX Runtime, each export parity-checked against peft (torch; ``[train]``).

Three exports, every one checked against PyTorch on held-out windows (synthetic normal
windows from a seed no training uses, regrouped as batches of 1, 3 and 8 channels); the
max absolute difference is recorded in the manifest and an export over tolerance is
refused (:class:`ExportError`, nothing left behind):

* :func:`export_merged`: the adapter merged into the base (``merge_and_unload``) as one
  ONNX model, optionally int8 dynamic-quantised (``onnxruntime.quantization.quantize_dynamic``),
  written as a complete model directory of kind ``merged`` that the store can activate.
* :func:`export_lora_graph`: the base's LoRA-input graph, added to the base directory
  (manifest key ``lora_graph``). The unmerged peft model (r = alpha = 1, so the scaling in
  the graph is 1) is exported with ``torch.onnx.export(dynamo=True, optimize=False)`` (the
  optimiser would fold the LoRA weights away); each ``lora_A``/``lora_B`` weight is renamed
  to its key in ``adapter_model.safetensors`` and made an overridable initializer with an
  empty default of symbolic rank (A ``[0, in]``, B ``[out, 0]``), so a run with no adapter is
  exactly the base and adapters of any rank fit.
* :func:`export_adapter_file`: an ``.onnx_adapter`` for that graph (``onnxruntime.AdapterFormat``),
  with the adapter's own scaling (alpha/r, or alpha/sqrt(r) with rsLoRA) folded into lora_B.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from peft import LoraConfig, get_peft_model

from models import integrity
from models.architecture import LORA_TARGETS, load_model
from models.export import export_onnx
from models.finetune import load_peft
from models.runtime import lora_graph_file, weights_sha256, window_length
from models.synthetic import normal_windows

DEFAULT_TOLERANCE = 1e-4
INT8_TOLERANCE = 0.25
"""int8 weights move outputs by a few hundredths of a standardised unit on this model; more is refused."""
HELDOUT_SEED = 987_654_321
LORA_GRAPH_FILE = "model_lora.onnx"
_PEFT_WEIGHT = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.default\.weight$")


class ExportError(Exception):
    """An export failed or was refused (parity over tolerance); one line for the user."""


def heldout_windows(T: int, n: int = 480) -> np.ndarray:
    """``[n, T]`` single-channel standardised windows no training run sees (fixed seed)."""
    return normal_windows(HELDOUT_SEED, n, T)


def quiet_session(path: Path) -> ort.InferenceSession:
    """A one-thread CPU session that does not log the (intended) LoRA-inputs-as-initializers warning."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def session_runner(session: ort.InferenceSession) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``batch -> {output: array}`` for a plain session."""
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    return lambda batch: dict(zip(names, session.run(names, {input_name: batch})))


def parity(reference: torch.nn.Module, run: Callable[[np.ndarray], dict[str, np.ndarray]],
           windows: np.ndarray, channel_counts: tuple[int, ...] = (1, 3, 8)) -> float:
    """Max |ONNX Runtime - torch| over both outputs, with ``windows [M, T]`` regrouped as batches
    of each channel count. NaN/inf count as infinitely different."""
    T = windows.shape[1]
    worst = 0.0
    reference = reference.eval()
    for c in channel_counts:
        m = (len(windows) // c) * c
        batch = np.ascontiguousarray(windows[:m].reshape(m // c, c, T).transpose(0, 2, 1), dtype=np.float32)
        got = run(batch)
        with torch.no_grad():
            want = dict(zip(("reconstruction", "embedding"), reference(torch.from_numpy(batch))))
        for key, value in want.items():
            if key not in got or got[key].shape != tuple(value.shape):
                return math.inf
            diff = float(np.max(np.abs(got[key] - value.numpy())))
            worst = max(worst, diff if math.isfinite(diff) else math.inf)
    return worst


def adapter_key(module: str, ab: str) -> str:
    """The key PEFT writes in adapter_model.safetensors for a module's lora_A / lora_B weight."""
    return f"base_model.model.{module}.lora_{ab}.weight"


def adapter_scaling(config: dict[str, Any]) -> float:
    """alpha/r (alpha/sqrt(r) with rsLoRA) from an adapter_config.json; refuses per-module patterns."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"adapter_config.json: peft_type {config.get('peft_type')!r}; only LORA is supported")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ExportError("adapters with per-module rank_pattern/alpha_pattern are not supported")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / (r ** 0.5) if config.get("use_rslora") else alpha / r


def _copy_manifest_io(base_manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("window_length", "inputs", "outputs", "embedding_dim", "channel_independent", "normalisation",
            "thresholds")
    return {k: base_manifest[k] for k in keys if k in base_manifest}


# ---- merged -------------------------------------------------------------------------------
def export_merged(base_dir: Path, adapter_dir: Path, out_dir: Path, int8: bool = False,
                  tolerance: float = DEFAULT_TOLERANCE, int8_tolerance: float = INT8_TOLERANCE,
                  name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Merge an adapter into its base and write a complete, parity-checked model directory.

    Returns the manifest written to ``out_dir`` (kind ``merged``). Raises ExportError when
    ONNX Runtime differs from the unmerged peft model by more than the tolerance.
    """
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    base_manifest = integrity.load_manifest(base_dir)
    adapter_manifest = integrity.load_manifest(adapter_dir)
    integrity.verify_dir(base_dir, base_manifest)
    integrity.verify_dir(adapter_dir, adapter_manifest)
    _require_same_base(base_manifest, adapter_manifest)
    T = window_length(base_manifest)
    reference = load_peft(base_dir, adapter_dir).get_base_model()  # unmerged LoRA layers
    merged = load_peft(base_dir, adapter_dir).merge_and_unload().eval()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty")
    work = Path(tempfile.mkdtemp(prefix="export-", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        from models.architecture import save_model

        save_model(merged, work)  # config.json + model.safetensors of the merged weights
        info = export_onnx(merged, work / "model.onnx", T)
        windows = heldout_windows(T)
        diff = parity(reference, session_runner(quiet_session(work / "model.onnx")), windows)
        if diff > tolerance:
            raise ExportError(f"merged export refused: ONNX Runtime differs from peft by {diff:.3g} > {tolerance:.1g}")
        export: dict[str, Any] = {**info, "merged_from": "peft merge_and_unload", "parity_max_abs_diff": diff,
                                  "parity_tolerance": tolerance, "parity_windows": int(len(windows)),
                                  "parity_channel_counts": [1, 3, 8], "parity_reference": "unmerged peft model (torch)"}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            float_size = (work / "model.onnx").stat().st_size
            stripped = onnx.load(str(work / "model.onnx"))
            del stripped.graph.value_info[:]  # the exporter's value_info trips the quantiser's shape inference
            onnx.save(stripped, str(work / "model_float.onnx"))
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
            try:
                quantize_dynamic(str(work / "model_float.onnx"), str(work / "model_int8.onnx"),
                                 weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
            os.replace(work / "model_int8.onnx", work / "model.onnx")
            (work / "model_float.onnx").unlink()
            qdiff = parity(reference, session_runner(quiet_session(work / "model.onnx")), windows)
            if qdiff > int8_tolerance:
                raise ExportError(f"int8 export refused: ONNX Runtime differs from peft by {qdiff:.3g} > "
                                  f"{int8_tolerance:.2g}")
            export.update({"quantization": "int8 dynamic (onnxruntime quantize_dynamic, QInt8 weights)",
                           "float_parity_max_abs_diff": diff, "parity_max_abs_diff": qdiff,
                           "parity_tolerance": int8_tolerance, "float_size_bytes": float_size,
                           "size_bytes": (work / "model.onnx").stat().st_size})
        manifest = {
            "name": name or f"{adapter_manifest.get('name', 'adapter')}-merged{'-int8' if int8 else ''}",
            "version": version or str(adapter_manifest.get("version", "1")),
            "kind": "merged", **_copy_manifest_io(base_manifest),
            "base_model": f"{base_manifest.get('name')}@{base_manifest.get('version')}",
            "base_sha256": weights_sha256(base_manifest),
            "adapter": {"name": adapter_manifest.get("name"), "version": adapter_manifest.get("version"),
                        "sha256": integrity.sha256_file(adapter_dir / "adapter_model.safetensors"),
                        "lora": adapter_manifest.get("lora")},
            "lora_targets": [],
            "training": adapter_manifest.get("training", {}),
            "evaluation": adapter_manifest.get("evaluation", {}),
            "export": export,
        }
        written = integrity.write_manifest(work, manifest)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _require_same_base(base_manifest: dict[str, Any], adapter_manifest: dict[str, Any]) -> None:
    want = adapter_manifest.get("base_sha256")
    have = weights_sha256(base_manifest)
    if want and have and want != have:
        raise ExportError(f"the adapter belongs to base {adapter_manifest.get('base_model')} (weights "
                          f"{str(want)[:12]}...), not to {base_manifest.get('name')} ({have[:12]}...)")


# ---- LoRA-input base graph -----------------------------------------------------------------
def export_lora_graph(base_dir: Path, targets: list[str] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                      out_dir: Path | None = None, version: str | None = None) -> dict[str, Any]:
    """Add the LoRA-input graph (``model_lora.onnx``) to a base and write its manifest.

    In place by default. With ``out_dir``, the base is copied there first and the copy gets
    version ``version`` (default ``<base version>+lora``), so it can be installed beside the
    plain base; its weights, hence its identity for adapters, are the same. Returns the new
    manifest. Raises ExportError if the graph without adapters differs from the base model
    by more than ``tolerance`` (the graph is then removed).
    """
    base_dir = Path(base_dir)
    manifest = integrity.load_manifest(base_dir)
    integrity.verify_dir(base_dir, manifest)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise ExportError(f"{out_dir} exists and is not empty")
        if out_dir.exists():
            out_dir.rmdir()
        shutil.copytree(base_dir, out_dir, ignore=shutil.ignore_patterns(LORA_GRAPH_FILE))
        manifest["derived_from"] = {"name": manifest.get("name"), "version": manifest.get("version"),
                                    "what": "the same base with its LoRA-input graph added"}
        manifest["version"] = version or f"{manifest.get('version', '1')}+lora"
        base_dir = out_dir
    T = window_length(manifest)
    targets = list(targets or manifest.get("lora_targets") or LORA_TARGETS)
    model = get_peft_model(load_model(base_dir), LoraConfig(r=1, lora_alpha=1, target_modules=targets,
                                                           lora_dropout=0.0, bias="none")).eval()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        info = export_onnx(model.get_base_model(), raw, T, optimize=False)
        graph_model = onnx.load(str(raw))
    renamed = _lora_inputs(graph_model)
    if len(renamed) != 2 * len(targets):
        raise ExportError(f"expected {2 * len(targets)} LoRA weights in the exported graph, found {len(renamed)}")
    path = base_dir / LORA_GRAPH_FILE
    onnx.save(graph_model, str(path))
    diff = parity(load_model(base_dir), session_runner(quiet_session(path)), heldout_windows(T))
    if diff > tolerance:
        path.unlink()
        raise ExportError(f"LoRA-input graph refused: without adapters it differs from the base by {diff:.3g}")
    manifest["lora_graph"] = {"file": LORA_GRAPH_FILE, "targets": targets, "inputs": sorted(renamed.values()),
                              "exporter": info["exporter"], "opset": info["opset"],
                              "parity_no_adapter_max_abs_diff": diff, "parity_tolerance": tolerance}
    return integrity.write_manifest(base_dir, manifest)


def _lora_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Rename peft's LoRA initializers to adapter keys and make them overridable inputs; returns old->new."""
    graph = model.graph
    renamed: dict[str, str] = {}
    for init in list(graph.initializer):
        m = _PEFT_WEIGHT.match(init.name)
        if not m:
            continue
        module, ab = m.group("module"), m.group("ab")
        new = adapter_key(module, ab)
        out_f, in_f = (int(init.dims[0]), int(init.dims[1]))
        dims: list[str | int]
        if ab == "A":
            empty, dims = np.zeros((0, in_f), np.float32), [f"r_{module}", in_f]
        else:
            empty, dims = np.zeros((out_f, 0), np.float32), [out_f, f"r_{module}"]
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(empty, new))
        graph.input.append(helper.make_tensor_value_info(new, TensorProto.FLOAT, dims))
        renamed[init.name] = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.value_info[:]  # shapes inferred with r = 1 no longer hold
    onnx.checker.check_model(model)
    return renamed


# ---- .onnx_adapter -------------------------------------------------------------------------
def export_adapter_file(base_dir: Path, adapter_dir: Path, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Write ``<adapter name>.onnx_adapter`` into the adapter directory and record its parity in the manifest.

    The base must have a LoRA-input graph (:func:`export_lora_graph`). Returns the adapter's
    new manifest. Raises ExportError (and removes the file) when ONNX Runtime with the
    adapter differs from peft by more than ``tolerance``.
    """
    from safetensors.numpy import load_file

    from models.runtime import ModelLoadError, ModelRuntime

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    base_manifest = integrity.load_manifest(base_dir)
    manifest = integrity.load_manifest(adapter_dir)
    integrity.verify_dir(adapter_dir, manifest)
    _require_same_base(base_manifest, manifest)
    graph = lora_graph_file(base_manifest)
    if graph is None:
        raise ExportError(f"{base_dir} has no LoRA-input graph: run `lora-gateway model export --lora-graph "
                          f"--base {base_dir}` first")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scaling = adapter_scaling(config)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    graph_info = base_manifest["lora_graph"]
    inputs = set(graph_info.get("inputs", [])) if isinstance(graph_info, dict) else set()
    params: dict[str, ort.OrtValue] = {}
    for key, value in tensors.items():
        if inputs and key not in inputs:
            raise ExportError(f"adapter tensor {key!r} is not a LoRA input of the base graph (other targets?)")
        value = value.astype(np.float32)
        if ".lora_B." in key:
            value = value * np.float32(scaling)
        params[key] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
    name = str(manifest.get("name", "adapter"))
    path = adapter_dir / f"{name}.onnx_adapter"
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters(params)
    fmt.export_adapter(str(path))
    # parity: ONNX Runtime (base LoRA graph + this adapter) vs peft in torch
    T = window_length(base_manifest)
    reference = load_peft(base_dir, adapter_dir)
    try:
        runtime = ModelRuntime.load(base_dir, ["CPUExecutionProvider"], adapters={name: path})
    except ModelLoadError as exc:
        path.unlink()
        raise ExportError(f".onnx_adapter refused: {exc}") from exc
    windows = heldout_windows(T)
    worst = parity(reference, lambda batch: runtime.run(batch, adapter=name), windows)
    runtime.close()
    if worst > tolerance:
        path.unlink()
        raise ExportError(f".onnx_adapter refused: ONNX Runtime differs from peft by {worst:.3g} > {tolerance:.1g}")
    export = dict(manifest.get("export") or {})
    export["onnx_adapter"] = {"file": path.name, "scaling_folded_into_lora_B": scaling,
                              "parity_max_abs_diff": worst, "parity_tolerance": tolerance,
                              "parity_windows": int(len(windows)), "parity_channel_counts": [1, 3, 8],
                              "parity_reference": "peft model (torch)", "onnxruntime": ort.__version__}
    manifest["export"] = export
    return integrity.write_manifest(adapter_dir, manifest)

"""Checks the model store runs on what it installs: archives, copies, LoRA graphs, adapter tensors (no torch).

Every refusal is a :class:`StoreError` with a one-line reason for the user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from models import integrity
from models.runtime import ModelLoadError, ModelRuntime, check_io, lora_graph_file


class StoreError(Exception):
    """A store operation was refused or failed; the message is one line for the user."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_tree(src: Path, dest: Path) -> Path:
    """Copy a model directory, refusing links and special files."""
    for path in src.rglob("*"):
        if path.is_symlink():
            raise StoreError(f"refusing symlink {path.relative_to(src)} in {src}")
        if not (path.is_file() or path.is_dir()):
            raise StoreError(f"refusing special file {path.relative_to(src)} in {src}")
    shutil.copytree(src, dest, symlinks=True)
    return dest


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract an archive after checking every member; returns the directory holding manifest.json."""
    dest.mkdir(parents=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(info.filename)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and mode not in (0o100000, 0o040000):
                        raise StoreError(f"refusing archive member {info.filename!r}: not a regular file")
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(m.name)
                    if not (m.isfile() or m.isdir()):
                        raise StoreError(f"refusing archive member {m.name!r}: links and devices are not allowed")
                tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise StoreError(f"{archive}: cannot read the archive ({exc})") from exc
    if (dest / integrity.MANIFEST).is_file():
        return dest
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / integrity.MANIFEST).is_file():
        return entries[0]
    raise StoreError(f"{archive}: no manifest.json at the top of the archive (or in its single top folder)")


def _check_member(name: str) -> None:
    try:
        integrity.check_relative(name)
    except integrity.IntegrityError as exc:
        raise StoreError(f"refusing archive: {exc}") from exc
    if PurePosixPath(name).suffix.lower() in integrity.PICKLE_SUFFIXES:
        raise StoreError(integrity.pickle_refusal(name))


def check_lora_graph(model_dir: Path, plain: ModelRuntime) -> None:
    """A base's LoRA-input graph must load, take the window input and give the outputs the
    manifest declares (names, rank, T), expose exactly the LoRA weights the manifest lists
    (``lora_graph.inputs``) as overridable initializers, and run as the base (``plain``, the
    base's plain graph already loaded) with no adapter.

    Its sha256 is checked with every other listed file (``integrity.verify_dir``); a graph
    the manifest names but does not list under ``files`` is refused here.
    """
    import numpy as np
    import onnxruntime as ort

    manifest = integrity.load_manifest(model_dir)
    rel = lora_graph_file(manifest)
    assert rel is not None
    if rel not in integrity.manifest_hashes(manifest):
        raise ModelLoadError(f"{rel}: the LoRA-input graph is not listed with its sha256 under 'files'")
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # LoRA weights as graph inputs are intended: no const-folding warning
        session = ort.InferenceSession(str(model_dir / rel), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{rel}: ONNX Runtime could not load the LoRA-input graph: {exc}") from exc
    check_io(session, manifest, plain.window_length, model_dir / rel)
    overridable = sorted(i.name for i in session.get_overridable_initializers())
    if not overridable:
        raise ModelLoadError(f"{rel}: the LoRA-input graph has no overridable LoRA weights")
    info = manifest.get("lora_graph")
    listed = info.get("inputs") if isinstance(info, dict) else None
    if listed is not None and sorted(listed) != overridable:
        raise ModelLoadError(f"{rel}: the graph's LoRA weights {overridable} differ from the manifest's "
                             f"lora_graph.inputs {sorted(listed)}")
    window = np.random.default_rng(0).standard_normal((2, plain.window_length, 2)).astype(np.float32)
    want = plain.run(window)
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {session.get_inputs()[0].name: window})))
    for key, value in want.items():
        if key not in got or got[key].shape != value.shape or float(np.max(np.abs(got[key] - value))) > 1e-3:
            raise ModelLoadError(f"{rel}: with no adapter the LoRA-input graph does not match the base model "
                                 f"(output {key!r})")


def check_adapter_tensors(model_dir: Path, manifest: dict[str, Any], base_dir: Path) -> None:
    """PEFT adapter tensors must name Linear weights of the base with matching shapes."""
    weights = model_dir / "adapter_model.safetensors"
    if not weights.is_file():
        if not any(model_dir.glob("*.onnx_adapter")):
            raise StoreError("adapter has neither adapter_model.safetensors nor an .onnx_adapter file")
        return
    from safetensors import safe_open

    base_file = base_dir / str(integrity.load_manifest(base_dir).get("weights", "model.safetensors"))
    try:
        with safe_open(str(base_file), framework="numpy") as fh:
            base_shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
        with safe_open(str(weights), framework="numpy") as fh:
            adapter_shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise StoreError(f"cannot read safetensors header: {exc}") from exc
    config_path = model_dir / "adapter_config.json"
    if not config_path.is_file():
        raise StoreError("adapter has adapter_model.safetensors but no adapter_config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"adapter_config.json: not valid JSON ({exc})") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise StoreError(f"adapter_config.json: peft_type {config.get('peft_type')!r}, only LORA is supported")
    if not adapter_shapes:
        raise StoreError("adapter_model.safetensors holds no tensors")
    for key, shape in adapter_shapes.items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if not m:
            raise StoreError(f"adapter tensor {key!r} is not a LoRA A/B weight")
        module, which = m.group(1), m.group(2)
        base_shape = base_shapes.get(f"{module}.weight")
        if base_shape is None or len(base_shape) != 2:
            raise StoreError(f"adapter tensor {key!r} targets {module!r}, which is not a Linear layer of the base "
                             "(adapter of another base?)")
        out_f, in_f = base_shape
        if len(shape) != 2 or (which == "A" and shape[1] != in_f) or (which == "B" and shape[0] != out_f):
            raise StoreError(f"adapter tensor {key!r} has shape {list(shape)}, which does not fit base layer "
                             f"{module!r} of shape {[out_f, in_f]} (adapter of another base?)")

"""ONNX Runtime serving of one model directory, with optional LoRA adapters (numpy + onnxruntime only).

Contract (what the daemon relies on):

* :meth:`ModelRuntime.load` verifies every file against ``manifest.json``, creates ONE
  ``InferenceSession`` with the filtered provider list, records which provider actually
  serves (``providers_in_use``) and why other preferences were dropped
  (``provider_notes``), loads each ``.onnx_adapter`` with ``onnxruntime.LoraAdapter``, and
  runs a warm-up batch through the base and through every adapter. Any failure raises
  :class:`ModelLoadError` with a one-line reason; nothing half-loaded is returned, so the
  caller keeps its previous runtime.
* :meth:`ModelRuntime.run` takes a float32 ``[N, T, C]`` window batch (T fixed by the
  manifest, N and C free) and returns ``{output name: array}``. It is safe to call from
  several threads at once, each with its own adapter: the session is shared and each
  adapter has its own read-only ``RunOptions``.
* With adapters, the session is built on the base's LoRA-input graph (manifest key
  ``lora_graph``; the bundled base ships one, ``model pretrain`` writes it): its LoRA
  weights are overridable initializers with empty defaults, so a run with
  ``adapter=None`` is exactly the base model. Without adapters the plain graph
  (``model.onnx``: the base, or a merged model) serves. ``graph_file`` says which.

This module must never import torch: it is on the daemon's import path.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models import integrity
from models.providers import choose_providers, create_session, describe_session

log = logging.getLogger(__name__)

ADAPTER_SUFFIX = ".onnx_adapter"


class ModelLoadError(Exception):
    """A model or adapter could not be loaded or failed its warm-up; one-line reason."""


def onnx_file(manifest: dict[str, Any]) -> str:
    """The relative path of the manifest's main ONNX graph (default ``model.onnx``)."""
    onnx = manifest.get("onnx")
    if isinstance(onnx, dict) and onnx.get("file"):
        return str(onnx["file"])
    if isinstance(onnx, str):
        return onnx
    return str(manifest.get("onnx_file", "model.onnx"))


def lora_graph_file(manifest: dict[str, Any]) -> str | None:
    """The relative path of the base's LoRA-input graph, or None if the base has none."""
    lg = manifest.get("lora_graph")
    if isinstance(lg, dict):
        return str(lg["file"]) if lg.get("file") else None
    return str(lg) if lg else None


def io_spec(manifest: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The manifest's declared ``inputs`` or ``outputs``: list of {name, shape, dtype}.

    Looks at the top level and under ``onnx``. Missing -> the contract's defaults
    (input ``window``; outputs ``reconstruction`` and ``embedding``).
    """
    spec = manifest.get(key)
    if spec is None and isinstance(manifest.get("onnx"), dict):
        spec = manifest["onnx"].get(key)
    if spec is None:
        return ([{"name": "window", "shape": ["N", window_length(manifest), "C"], "dtype": "float32"}]
                if key == "inputs" else [{"name": "reconstruction"}, {"name": "embedding"}])
    if isinstance(spec, dict):  # {name: {shape, dtype}} or {name: shape}
        return [dict(name=k, **(v if isinstance(v, dict) else {"shape": v})) for k, v in spec.items()]
    return [dict(s) for s in spec]


def window_length(manifest: dict[str, Any]) -> int:
    """T, the fixed window length the model takes."""
    for key in ("window_length", "T"):
        if isinstance(manifest.get(key), int):
            return int(manifest[key])
    model = manifest.get("model") or manifest.get("config") or {}
    if isinstance(model, dict) and isinstance(model.get("window_length"), int):
        return int(model["window_length"])
    raise integrity.IntegrityError("manifest has no integer 'window_length'")


def num_channels_hint(manifest: dict[str, Any]) -> int:
    """A channel count for warm-up batches: the manifest's channel list, else 1."""
    channels = manifest.get("channels")
    return len(channels) if isinstance(channels, (list, dict)) and channels else 1


@dataclass
class _Adapter:
    name: str
    path: Path
    adapter: Any  # onnxruntime.LoraAdapter
    options: ort.RunOptions
    parameters: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)


def _dtype_name(ort_type: str) -> str:
    return ort_type.replace("tensor(", "").rstrip(")")


class ModelRuntime:
    """One loaded model (one session) plus its adapters. Build with :meth:`load`."""

    def __init__(self, model_dir: Path, manifest: dict[str, Any], session: ort.InferenceSession,
                 providers_in_use: list[str], provider_notes: list[str], adapters: dict[str, _Adapter],
                 graph_file: str = "model.onnx") -> None:
        self.model_dir = model_dir
        self.graph_file = graph_file  # the graph the session runs: model.onnx, or the LoRA-input graph
        self.manifest = manifest
        self._session: ort.InferenceSession | None = session
        self.providers_in_use = providers_in_use
        self.provider_notes = provider_notes
        self._adapters = adapters
        self.window_length = window_length(manifest)
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        self._lock = threading.Lock()  # only close() takes it; run() reads the session reference once

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: Path, providers: list[str], intra_op_threads: int = 1,
             adapters: dict[str, Path] | None = None, cuda_tf32: bool = False) -> "ModelRuntime":
        """Verify, open, check and warm up a model directory. Raises ModelLoadError on any failure.

        ``providers`` is a preference list (short or full names); ``adapters`` maps an
        adapter name (as used in ``run``) to a ``.onnx_adapter`` file or to an installed
        adapter directory holding one (whose manifest must name this base's hash).
        ``cuda_tf32`` reaches the CUDA provider as ``use_tf32`` (off: CUDA decides like
        the CPU). Preferences that were skipped or failed to initialise are logged as ONE
        line (WARNING if one failed to initialise, INFO if only absent from this build).
        """
        model_dir = Path(model_dir)
        try:
            manifest = integrity.load_manifest(model_dir)
            integrity.verify_dir(model_dir, manifest, strict=False)
            T = window_length(manifest)
        except integrity.IntegrityError as exc:
            raise ModelLoadError(f"{model_dir}: {exc}") from exc
        rel = lora_graph_file(manifest) if adapters else onnx_file(manifest)
        if rel is None:
            raise ModelLoadError(f"{model_dir}: adapters were requested but this base has no LoRA-input graph "
                                 "(manifest 'lora_graph'); run `lora-gateway model export --lora-graph` on it, "
                                 "or serve a merged adapter model instead")
        chosen, reasons = choose_providers(list(providers))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(intra_op_threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            session, failed = create_session(model_dir / rel, opts, chosen, cuda_tf32=cuda_tf32)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"{model_dir / rel}: ONNX Runtime could not load it: {_one_line(exc)}") from exc
        in_use = list(session.get_providers())
        failed_names = {f.split(":", 1)[0] for f in failed}
        notes = reasons + failed + describe_session([p for p in chosen if p not in failed_names], in_use)
        check_io(session, manifest, T, model_dir / rel)
        loaded: dict[str, _Adapter] = {}
        if adapters:
            base_id = weights_sha256(manifest)
            overridable = {i.name: i for i in session.get_overridable_initializers()}
            for name, path in adapters.items():
                loaded[name] = _load_adapter(name, Path(path), overridable, base_id)
        runtime = cls(model_dir, manifest, session, in_use, notes, loaded, graph_file=rel)
        runtime._warm_up(T, num_channels_hint(manifest))
        log.debug("model %s loaded from %s (%s) on %s%s", manifest.get("name", "?"), model_dir, rel, in_use[0],
                  f" with adapters {sorted(loaded)}" if loaded else "")
        if notes:
            level = logging.WARNING if failed or len(notes) > len(reasons) else logging.INFO
            log.log(level, "execution provider %s serves %s; skipped: %s", in_use[0], model_dir, "; ".join(notes))
        return runtime

    def _warm_up(self, T: int, C: int) -> None:
        rng = np.random.default_rng(0)
        batch = rng.standard_normal((2, T, C)).astype(np.float32)
        base = None
        for name in [None, *self._adapters]:
            try:
                out = self.run(batch, adapter=name)
            except Exception as exc:
                what = f"adapter {name!r}" if name else "base model"
                raise ModelLoadError(f"{self.model_dir}: warm-up batch failed for {what}: {_one_line(exc)}") from exc
            for key, value in out.items():
                if not np.all(np.isfinite(value)):
                    raise ModelLoadError(f"{self.model_dir}: warm-up output {key!r} is not finite "
                                         f"({'adapter ' + name if name else 'base'})")
            if name is None:
                base = out
            elif base is not None and all(np.array_equal(base[k], out[k]) for k in out):
                raise ModelLoadError(f"{self.model_dir}: adapter {name!r} changed nothing in the warm-up "
                                     "(its tensors do not reach the graph)")

    # ---- serving -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, sorted."""
        return sorted(self._adapters)

    def run(self, window: np.ndarray, adapter: str | None = None) -> dict[str, np.ndarray]:
        """Run one batch ``[N, T, C]`` float32 (N, C >= 1) and return ``{output name: array}``.

        ``adapter`` selects a loaded adapter (None: the model itself). Raises ValueError on
        a wrong shape or dtype or an unknown adapter. Thread-safe.
        """
        session = self._session
        if session is None:
            raise RuntimeError("runtime is closed")
        if not isinstance(window, np.ndarray) or window.ndim != 3:
            raise ValueError(f"window must be a 3-d array [N, T, C], got {getattr(window, 'shape', type(window))}")
        if window.shape[1] != self.window_length or window.shape[0] < 1 or window.shape[2] < 1:
            raise ValueError(f"window shape {window.shape}: expected [N>=1, {self.window_length}, C>=1]")
        if window.dtype != np.float32:
            raise ValueError(f"window dtype {window.dtype}: expected float32")
        options = None
        if adapter is not None:
            entry = self._adapters.get(adapter)
            if entry is None:
                raise ValueError(f"unknown adapter {adapter!r} (loaded: {', '.join(self.adapter_names) or 'none'})")
            options = entry.options
        results = session.run(None, {self.input_name: np.ascontiguousarray(window)}, options)
        return dict(zip(self.output_names, results))

    def close(self) -> None:
        """Drop the session and adapters (further runs raise RuntimeError; runs already
        started finish). Idempotent."""
        with self._lock:
            self._session = None
            self._adapters = {}


def weights_sha256(manifest: dict[str, Any]) -> str | None:
    """A base model's identity: the sha256 of its safetensors weights (None if it has none).

    Adapters name their base by this hash: the listed hash of the weights file
    (manifest ``weights`` key, default ``model.safetensors``).
    """
    weights = str(manifest.get("weights", "model.safetensors"))
    try:
        return integrity.manifest_hashes(manifest).get(weights)
    except integrity.IntegrityError:
        return None


def adapter_base_sha256(manifest: dict[str, Any]) -> str | None:
    """The base hash an adapter manifest names (``base.sha256`` or ``base_sha256``)."""
    base = manifest.get("base")
    if isinstance(base, dict) and base.get("sha256"):
        return str(base["sha256"])
    value = manifest.get("base_sha256")
    return str(value) if value else None


def find_adapter_file(path: Path) -> Path:
    """The ``.onnx_adapter`` file at path, or the single one inside directory path."""
    if path.is_dir():
        found = sorted(path.glob(f"*{ADAPTER_SUFFIX}"))
        if len(found) != 1:
            raise ModelLoadError(f"{path}: expected exactly one {ADAPTER_SUFFIX} file, found {len(found)} "
                                 "(run `lora-gateway model export --adapter-file`)")
        return found[0]
    if not path.is_file():
        raise ModelLoadError(f"{path}: adapter file not found")
    return path


def _load_adapter(name: str, path: Path, overridable: dict[str, Any], base_id: str | None) -> _Adapter:
    if path.is_dir() and (path / integrity.MANIFEST).is_file():
        try:
            man = integrity.load_manifest(path)
            integrity.verify_dir(path, man, strict=False)
        except integrity.IntegrityError as exc:
            raise ModelLoadError(f"adapter {name!r}: {path}: {exc}") from exc
        named = adapter_base_sha256(man)
        if base_id and named and named != base_id:
            raise ModelLoadError(f"adapter {name!r} belongs to base {named[:12]}..., not to the loaded base "
                                 f"{base_id[:12]}...")
    file = find_adapter_file(path)
    try:
        params = ort.AdapterFormat.read_adapter(str(file)).get_parameters()
    except Exception as exc:
        raise ModelLoadError(f"adapter {name!r}: {file}: not a readable ONNX Runtime adapter: "
                             f"{_one_line(exc)}") from exc
    if not params:
        raise ModelLoadError(f"adapter {name!r}: {file}: holds no parameters")
    described: dict[str, tuple[str, tuple[int, ...]]] = {}
    for pname, value in params.items():
        target = overridable.get(pname)
        if target is None:
            raise ModelLoadError(f"adapter {name!r}: tensor {pname!r} is not a LoRA input of this base graph "
                                 "(adapter of another base, or other target modules)")
        shape = tuple(int(d) for d in value.shape())
        dtype = _dtype_name(value.data_type())
        if dtype != _dtype_name(target.type) or len(shape) != len(target.shape):
            raise ModelLoadError(f"adapter {name!r}: tensor {pname!r} is {dtype}{list(shape)}, the graph wants "
                                 f"{_dtype_name(target.type)} of rank {len(target.shape)}")
        for got, want in zip(shape, target.shape):
            if isinstance(want, int) and want > 0 and got != want:
                raise ModelLoadError(f"adapter {name!r}: tensor {pname!r} has shape {list(shape)}, the base "
                                     f"graph wants {list(target.shape)}")
        described[pname] = (dtype, shape)
    try:
        lora = ort.LoraAdapter()
        lora.Load(str(file))
        options = ort.RunOptions()
        options.add_active_adapter(lora)
    except Exception as exc:
        raise ModelLoadError(f"adapter {name!r}: {file}: ONNX Runtime refused it: {_one_line(exc)}") from exc
    return _Adapter(name=name, path=file, adapter=lora, options=options, parameters=described)


def check_io(session: ort.InferenceSession, manifest: dict[str, Any], T: int, path: Path) -> None:
    """The graph's inputs and outputs must match the manifest (names, rank, fixed dims)."""
    inputs = session.get_inputs()
    declared_in = io_spec(manifest, "inputs")
    if len(inputs) != 1:
        raise ModelLoadError(f"{path}: graph has {len(inputs)} inputs {[i.name for i in inputs]}, expected one "
                             "window input")
    want = declared_in[0]
    got = inputs[0]
    if got.name != want.get("name", "window"):
        raise ModelLoadError(f"{path}: graph input is {got.name!r}, manifest says {want.get('name')!r}")
    if len(got.shape) != 3:
        raise ModelLoadError(f"{path}: input {got.name!r} has shape {got.shape}, expected [N, T, C]")
    if _dtype_name(got.type) != "float":
        raise ModelLoadError(f"{path}: input {got.name!r} is {got.type}, expected float32")
    _check_shape(path, got.name, list(got.shape), want.get("shape"), T)
    outputs = {o.name: o for o in session.get_outputs()}
    for spec in io_spec(manifest, "outputs"):
        out = outputs.get(spec["name"])
        if out is None:
            raise ModelLoadError(f"{path}: manifest declares output {spec['name']!r}, graph has "
                                 f"{sorted(outputs)}")
        if spec.get("shape") is not None:
            _check_shape(path, out.name, list(out.shape), spec["shape"], T)


def _check_shape(path: Path, name: str, got: list[Any], declared: Any, T: int) -> None:
    if declared is None:
        declared = ["N", T, "C"]
    if len(got) != len(declared):
        raise ModelLoadError(f"{path}: {name!r} has rank {len(got)} {got}, manifest declares {declared}")
    if declared[1] in (T, "T") and isinstance(got[1], int) and got[1] != T:
        raise ModelLoadError(f"{path}: {name!r} takes T={got[1]} steps, manifest window_length is {T}")
    for g, d in zip(got, declared):
        if isinstance(d, int) and isinstance(g, int) and g != d:
            raise ModelLoadError(f"{path}: {name!r} has shape {got}, manifest declares {declared}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

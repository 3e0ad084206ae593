"""Execution-provider choice for ONNX Runtime sessions.

ONNX Runtime does not fail when asked for a provider it lacks: it falls back to CPU with
only a Python ``UserWarning``. So the gateway filters the preference list itself against
``onnxruntime.get_available_providers()``, keeps a human-readable reason for every
preference it drops, and checks ``session.get_providers()`` after loading
(see :func:`describe_session`).

Short names are accepted (``tensorrt``, ``cuda``, ``openvino``, ``coreml``, ``dml``,
``cpu``) as well as ONNX Runtime's full names. Only ``CPUExecutionProvider`` has been
proven on this project's machines; CUDA, TensorRT and OpenVINO paths are written but
unproven (no GPU was available to test them).

:func:`create_session` builds a session without ONNX Runtime's own fallback (which prints
a multi-line "EP Error" block and retries with a list of its choosing): a provider that
fails to initialise is dropped, its one-line reason kept, and the session retried with the
rest of the list. ONNX Runtime's process-wide logger is held at FATAL while a session is
created, so a missing library (TensorRT without libnvinfer) is not printed as a red block
on stderr either; the caller logs the reasons in one line.

CUDA TF32 is a setting (``cuda_tf32``, off by default): with it off, CUDA computes float32
matrix products in full float32 and decides like the CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import onnxruntime as ort

CPU = "CPUExecutionProvider"

ALIASES: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": CPU,
}


def canonical_name(name: str) -> str:
    """Map a short or full provider name to ONNX Runtime's spelling (unknown names unchanged)."""
    stripped = name.strip()
    alias = ALIASES.get(stripped.lower())
    if alias:
        return alias
    for full in ort.get_all_providers():
        if full.lower() == stripped.lower():
            return full
    return stripped


def choose_providers(preferred: list[str]) -> tuple[list[str], list[str]]:
    """Filter a provider preference list against this onnxruntime build.

    Returns ``(chosen, skipped_reasons)``: ``chosen`` keeps the order of ``preferred``,
    holds only providers this build offers, has no duplicates, and always ends with
    ``CPUExecutionProvider``; ``skipped_reasons`` has one line per dropped preference,
    e.g. ``"CUDAExecutionProvider: not available in this onnxruntime build"``.
    """
    available = set(ort.get_available_providers())
    known = set(ort.get_all_providers())
    chosen: list[str] = []
    reasons: list[str] = []
    for raw in preferred:
        name = canonical_name(raw)
        if name in chosen:
            continue
        if name not in known:
            reasons.append(f"{raw}: unknown execution provider (known: short names {', '.join(sorted(ALIASES))})")
        elif name not in available:
            reasons.append(f"{name}: not available in this onnxruntime build "
                           f"(available: {', '.join(sorted(available))})")
        elif name == CPU:
            continue  # CPU goes last, whatever its place in the list
        else:
            chosen.append(name)
    chosen.append(CPU)
    return chosen, reasons


def describe_session(requested: list[str], in_use: list[str]) -> list[str]:
    """Reasons for requested providers that a created session did not take up.

    ``in_use`` is ``session.get_providers()``. A provider that was available but is not in
    use failed to initialise (for example a CUDA build without the CUDA libraries).
    """
    notes = []
    for name in requested:
        if name not in in_use:
            notes.append(f"{name}: requested and available, but the session did not take it up "
                         "(its libraries or device failed to initialise); serving with "
                         f"{in_use[0] if in_use else 'nothing'}")
    return notes


CUDA = "CUDAExecutionProvider"
ORT_LOGGER_DEFAULT = 2  # ONNX Runtime's own default severity (WARNING), restored after a session is made
_QUIET = threading.Lock()


def provider_options(chosen: list[str], cuda_tf32: bool = False) -> list[tuple[str, dict[str, str]]]:
    """``(name, options)`` pairs for ``InferenceSession(providers=...)``.

    CUDA gets ``use_tf32`` from the setting ("1"/"0"; ONNX Runtime's own default is on).
    Other providers get no options.
    """
    out: list[tuple[str, dict[str, str]]] = []
    for name in chosen:
        options: dict[str, str] = {}
        if name == CUDA:
            options["use_tf32"] = "1" if cuda_tf32 else "0"
        out.append((name, options))
    return out


def _failed_provider(message: str, chosen: list[str]) -> str:
    """The provider a session-creation error is about: the first non-CPU one it names,
    else the first non-CPU one in the list."""
    lowered = message.lower()
    candidates = [p for p in chosen if p != CPU]
    for name in candidates:
        stem = name.removesuffix("ExecutionProvider").lower()
        if stem and stem in lowered:
            return name
    return candidates[0]


def create_session(path: Path, sess_options: ort.SessionOptions, chosen: list[str],
                   cuda_tf32: bool = False) -> tuple[ort.InferenceSession, list[str]]:
    """An InferenceSession on ``path`` with the first providers of ``chosen`` that initialise.

    ``chosen`` is the output of :func:`choose_providers` (ends with CPU). Returns the
    session and one reason line per provider dropped because creation failed with it.
    Raises the last error when even the CPU-only session fails (a bad model file).
    """
    remaining = list(chosen)
    failed: list[str] = []
    while True:
        try:
            with _QUIET:
                ort.set_default_logger_severity(4)  # FATAL only: no red multi-line block on stderr
                try:
                    session = ort.InferenceSession(str(path), sess_options=sess_options,
                                                   providers=provider_options(remaining, cuda_tf32), enable_fallback=0)
                finally:
                    ort.set_default_logger_severity(ORT_LOGGER_DEFAULT)
            return session, failed
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            if remaining == [CPU]:
                raise
            text = " ".join(str(exc).split())
            name = _failed_provider(text, remaining)
            failed.append(f"{name}: failed to initialise ({text[:200]})")
            remaining.remove(name)


GPU_PROVIDERS = frozenset({CUDA, "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider"})


def gpu_name() -> str:
    """The first NVIDIA GPU's name: from onnxruntime's device list when it carries one, else
    ``nvidia-smi``, else ``"unknown"``. Never raises (doctor output only)."""
    try:
        for ep_device in getattr(ort, "get_ep_devices", list)():
            hw = ep_device.device
            if hw.type == ort.OrtHardwareDeviceType.GPU:
                metadata: dict[str, Any] = dict(hw.metadata)
                for key in ("Description", "DeviceName", "Name", "name"):
                    if metadata.get(key):
                        return str(metadata[key])
    except Exception:  # noqa: BLE001 - older onnxruntime builds lack parts of this API
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=5, check=False).stdout.strip().splitlines()
            if out and out[0].strip():
                return out[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"

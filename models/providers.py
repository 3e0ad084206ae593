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
"""

from __future__ import annotations

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

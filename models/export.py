"""ONNX export of a window model and the ONNX Runtime vs PyTorch parity check (torch).

``export_onnx`` writes a graph with input ``window [N, T, C]`` (N and C dynamic, T fixed)
and outputs ``reconstruction [N, T, C]`` and ``embedding [N, C, D]`` with
``torch.onnx.export(dynamo=True)``. ``check_parity`` runs ONNX Runtime and PyTorch on the
same held-out windows and raises ``ParityError`` when the max absolute difference of any
output exceeds the tolerance. Both work for any ``nn.Module`` with that forward signature
(the base model, or a LoRA-merged one). The saved graph carries no per-node metadata
(``strip_node_metadata``), so the same weights export to the same bytes in any checkout.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

INPUT_NAME = "window"
OUTPUT_NAMES: tuple[str, str] = ("reconstruction", "embedding")
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance on held-out windows."""


def export_onnx(
    model: nn.Module,
    path: str | Path,
    window_length: int,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
) -> dict[str, Any]:
    """Export ``model`` to ``path``; returns ``{"exporter", "opset", "torch"}`` for the manifest."""
    model = model.eval()
    example = torch.zeros(2, window_length, 3)
    n = torch.export.Dim("batch", min=1)
    c = torch.export.Dim("channels", min=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        noisy = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
        levels = [lg.level for lg in noisy]
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"window": {0: n, 2: c}},
                opset_version=opset,
                optimize=optimize,
                external_data=False,
            )
            assert program is not None
            strip_node_metadata(program.model)
            program.save(str(path), external_data=False)
        finally:
            for lg, lvl in zip(noisy, levels):
                lg.setLevel(lvl)
    return {"exporter": f"torch.onnx.export(dynamo=True, optimize={optimize})", "opset": opset, "torch": torch.__version__}


def strip_node_metadata(model: Any) -> None:
    """Drop every node's ``metadata_props`` from an exported ``onnx_ir`` model, in place.

    They are torch's debug records (``pkg.torch.onnx.stack_trace``, ``fx_node``, name scopes);
    the stack traces hold the absolute path of the checkout that exported, so without this the
    same weights give different bytes in another checkout. The graph itself is unchanged."""
    for node in model.graph.all_nodes():
        node.metadata_props.clear()
    for function in model.functions.values():
        for node in function.all_nodes():
            node.metadata_props.clear()


def onnx_session(path: str | Path) -> Any:
    """A single-threaded CPU ONNX Runtime session for ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    windows: np.ndarray,
    tolerance: float = DEFAULT_TOLERANCE,
    channel_counts: tuple[int, ...] = (1, 3, 8),
) -> float:
    """Max |onnx - torch| over every output on ``windows`` (``[M, T]`` single-channel,
    regrouped into batches of several channel counts). Raises ParityError above ``tolerance``."""
    windows = np.asarray(windows, dtype=np.float32)
    session = onnx_session(onnx_path)
    worst = 0.0
    model = model.eval()
    for c in channel_counts:
        m = (windows.shape[0] // c) * c
        if m == 0:
            continue
        batch = windows[:m].reshape(m // c, c, -1).transpose(0, 2, 1).copy()
        ort_out = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        with torch.no_grad():
            torch_out = model(torch.from_numpy(batch))
        for a, b in zip(ort_out, torch_out):
            if a.shape != tuple(b.shape):
                raise ParityError(f"shape mismatch at C={c}: onnx {a.shape} vs torch {tuple(b.shape)}")
            worst = max(worst, float(np.max(np.abs(a - b.numpy()))))
    if not np.isfinite(worst) or worst > tolerance:
        raise ParityError(f"ONNX Runtime differs from PyTorch by {worst:.3g} > tolerance {tolerance:.1g}")
    return worst

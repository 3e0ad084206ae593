"""Model variants, each as a ratio measured in one run (interleaved rounds, 1 thread each):

- ONNX Runtime vs PyTorch eager (the same bundled base model; needs the [train] extra);
- int8 (onnxruntime.quantization.quantize_dynamic, made here in a temp dir) vs fp32;
- merged vs multi-adapter: the example site adapter served as an ``.onnx_adapter`` on the
  LoRA-input graph (models/base/model_lora.onnx) vs a merged model. A merged adapter has exactly the
  base graph's shape and operators (only the weight values differ), so the base model
  stands in for it unless ``--merged DIR`` names a real merged export
  (``lora-gateway model export --merged``, see docs/adapters.md).

    .venv/bin/python bench/model_variants.py [--batches 1,64] [--channels 3] [--rounds 5]

Prints windows/s per variant and batch size, and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine  # noqa: E402


def timed(fn: Callable[[], object], seconds: float) -> float:
    """Runs per second of ``fn`` over about ``seconds``."""
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3, help="per variant, batch and round")
    ap.add_argument("--merged", type=Path, help="a merged adapter export (default: the base stands in)")
    args = ap.parse_args()
    import onnxruntime as ort

    from models.runtime import ModelRuntime

    print(machine())
    base = REPO / "models" / "base"
    runners: dict[str, Callable[[np.ndarray], object]] = {}
    fp32 = ModelRuntime.load(base, ["CPUExecutionProvider"], intra_op_threads=1)
    runners["onnx fp32"] = fp32.run
    tmp = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    try:
        import logging

        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q, stripped_path = tmp / "model_int8.onnx", tmp / "model_float.onnx"
        stripped = onnx.load(str(base / "model.onnx"))
        del stripped.graph.value_info[:]  # the exporter's value_info trips the quantiser (as models/adapters.py)
        onnx.save(stripped, str(stripped_path))
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's pre-processing hint
        quantize_dynamic(str(stripped_path), str(q), weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
        runners["onnx int8"] = lambda x: sess.run(None, {"window": x})
        size = ((base / "model.onnx").stat().st_size, q.stat().st_size)
    except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is reported, not fatal
        print(f"int8: skipped ({type(exc).__name__}: {exc})")
        size = None
    adapter_dir = REPO / "models" / "site_adapters" / "example-site"
    lora = ModelRuntime.load(base, ["CPUExecutionProvider"], intra_op_threads=1,
                             adapters={"example-site": adapter_dir})
    runners["multi-adapter (.onnx_adapter active)"] = lambda x: lora.run(x, adapter="example-site")
    merged = ModelRuntime.load(args.merged, ["CPUExecutionProvider"], intra_op_threads=1) if args.merged else fp32
    runners["merged" + ("" if args.merged else " (base graph stands in)")] = merged.run
    try:
        import torch

        from models.architecture import load_model

        torch.set_num_threads(1)
        model = load_model(base).eval()

        def torch_run(x: np.ndarray) -> object:
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        runners["torch eager"] = torch_run
    except ImportError as exc:
        print(f"torch eager: skipped ({exc}; install the [train] extra)")
    T = fp32.window_length
    batches = [int(b) for b in args.batches.split(",")]
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for b in batches:
            x = np.random.default_rng(b).normal(size=(b, T, args.channels)).astype(np.float32)
            for name, run in runners.items():
                rates.setdefault((name, b), []).append(b * timed(lambda: run(x), args.seconds))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nT={T}, C={args.channels}, 1 thread, median of {args.rounds} interleaved rounds (windows/s)")
    print("| variant | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("| --- | " + " | ".join("---:" for _ in batches) + " |")
    for name in runners:
        print(f"| {name} | " + " | ".join(f"{med[(name, b)]:,.0f}" for b in batches) + " |")
    print("\nratios (> 1: the first is faster)")
    pairs = [("onnx fp32", "torch eager"), ("onnx int8", "onnx fp32"),
             (next(n for n in runners if n.startswith("merged")), "multi-adapter (.onnx_adapter active)")]
    for a, b_ in pairs:
        if a in runners and b_ in runners:
            print(f"{a} / {b_}: " + ", ".join(f"batch {b} {med[(a, b)] / med[(b_, b)]:.2f}x" for b in batches))
    if size:
        print(f"int8 size {size[1] / 1024:.0f} KB vs fp32 {size[0] / 1024:.0f} KB")
        x = np.random.default_rng(1).normal(size=(256, T, args.channels)).astype(np.float32)
        a, b2 = fp32.run(x), runners["onnx int8"](x)
        diff = np.abs(np.asarray(b2[0]) - a["reconstruction"]).max()  # type: ignore[index]
        print(f"int8 vs fp32 reconstruction max abs diff on 256 random windows: {diff:.4f}")


if __name__ == "__main__":
    main()

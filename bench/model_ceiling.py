"""The model's own ceiling: raw ONNX Runtime windows/s of the bundled model through the
gateway's ModelRuntime (1 intra-op thread, as the daemon), at the batch sizes the batcher
makes (1 .. max_batch), 3 channels (the benches' devices), no Python pipeline around it.

    .venv/bin/python bench/model_ceiling.py [--channels 3] [--seconds 1.5] [--rounds 3]

Batch sizes are timed in interleaved rounds (a busy neighbour slows them alike); the best
round per size is printed. bench/e2e_mqtt.py measures the same ceiling inside its own run
and prints the pipeline-over-raw ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8,16,32,64")
    args = ap.parse_args()
    from gateway.config import DEFAULT_MODEL_DIR
    from models.runtime import ModelRuntime

    print(machine())
    rt = ModelRuntime.load(DEFAULT_MODEL_DIR, ["CPUExecutionProvider"], intra_op_threads=1)
    T = rt.window_length
    best: dict[int, float] = {}
    lat: dict[int, float] = {}
    for _ in range(args.rounds):
        for b in [int(v) for v in args.batches.split(",")]:
            x = np.random.default_rng(b).normal(size=(b, T, args.channels)).astype(np.float32)
            for _ in range(3):
                rt.run(x)
            n, t0 = 0, time.perf_counter()
            times = []
            while time.perf_counter() - t0 < args.seconds / args.rounds:
                t = time.perf_counter()
                rt.run(x)
                times.append(time.perf_counter() - t)
                n += 1
            rate = n * b / (time.perf_counter() - t0)
            if rate > best.get(b, 0.0):
                best[b], lat[b] = rate, float(np.median(times)) * 1000
    print(f"model {DEFAULT_MODEL_DIR.name}, T={T}, C={args.channels}, providers {rt.providers_in_use}, 1 intra-op thread")
    print("| batch | windows/s | p50 per run (ms) |\n| ---: | ---: | ---: |")
    for b in sorted(best):
        print(f"| {b} | {best[b]:,.0f} | {lat[b]:.3f} |")


if __name__ == "__main__":
    main()

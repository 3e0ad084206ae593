"""Throughput of the shipped base model (ONNX Runtime, 1 thread) and of models.scoring.scorer.

    .venv/bin/python bench/model_speed.py

Prints windows/s for batch sizes and channel counts, and the scorer's cost per batch.
A report for docs/models.md, not a timed test (numbers move with machine load).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.export import onnx_session
from models.manifest import base_model_dir, load_manifest
from models.scoring.scorer import WindowScorer


def timed(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(max(3, reps // 10)):
        fn()
    best = float("inf")
    for _ in range(3):  # best of three runs: the least disturbed by other processes
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main() -> int:
    manifest = load_manifest(base_model_dir())
    session = onnx_session(base_model_dir() / "model.onnx")
    t = manifest.window_length
    rng = np.random.default_rng(0)
    print(f"model {manifest.name} {manifest.version}: T={t}, {manifest.training['parameters']} parameters, "
          f"model.onnx {(base_model_dir() / 'model.onnx').stat().st_size / 1024:.0f} KiB, ONNX Runtime 1 thread")
    print(f"{'N':>5} {'C':>3} {'ms/batch':>9} {'windows/s':>11} {'series/s':>11}")
    for n, c in ((1, 1), (1, 8), (64, 1), (64, 4), (64, 8), (512, 1)):
        x = rng.normal(size=(n, t, c)).astype(np.float32)
        dt = timed(lambda x=x: session.run(None, {"window": x}), max(20, 20000 // (n * c)))
        print(f"{n:>5} {c:>3} {dt * 1e3:>9.3f} {n / dt:>11,.0f} {n * c / dt:>11,.0f}")
    scorer = WindowScorer(manifest)
    for c in (1, 8):
        x = rng.normal(size=(64, t, c)).astype(np.float32)
        rec, emb = session.run(None, {"window": x})
        states = [scorer.new_state(c) for _ in range(8)]
        for st in states:
            cal = rng.normal(size=(300, t, c)).astype(np.float32)
            r, e = session.run(None, {"window": cal})
            scorer.calibrate_windows(st, cal, {"reconstruction": r, "embedding": e})
        batch_states = [states[i % 8] for i in range(64)]
        out = {"reconstruction": rec, "embedding": emb}
        dt = timed(lambda x=x, out=out, bs=batch_states: scorer.score(x, out, bs), 200)
        print(f"scoring N=64 C={c} (8 devices): {dt * 1e3:.3f} ms/batch, {64 / dt:,.0f} windows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

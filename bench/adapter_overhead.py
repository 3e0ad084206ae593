"""What serving a LoRA adapter costs on ONNX Runtime (CPU, one intra-op thread).

Compares, at batch 1 and 64 (3 channels each), the median latency of one ``run`` for:
the plain base graph; the LoRA-input graph with no adapter; the same graph with an
``.onnx_adapter`` active; and the adapter merged into one model. The four are timed in
interleaved rounds so a busy neighbour slows them alike.

    python bench/adapter_overhead.py BASE_WITH_LORA_GRAPH ADAPTER_DIR MERGED_DIR [ROUNDS]
    # e.g. models/base models/site_adapters/example-site /tmp/example-merged

The bundled ``models/base`` carries its LoRA-input graph; ``docs/adapters.md`` says how to
make a merged directory (``lora-gateway model export --merged``). Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from models.runtime import ModelRuntime


def main(base: Path, adapter: Path, merged: Path, rounds: int = 30) -> dict[str, dict[str, float]]:
    plain = ModelRuntime.load(base, ["cpu"])
    shared = ModelRuntime.load(base, ["cpu"], adapters={"site": adapter})
    merged_rt = ModelRuntime.load(merged, ["cpu"])
    cases = {
        "base": lambda x: plain.run(x),
        "lora_graph_no_adapter": lambda x: shared.run(x),
        "lora_graph_with_adapter": lambda x: shared.run(x, adapter="site"),
        "merged": lambda x: merged_rt.run(x),
    }
    out: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(0)
    for batch, reps in ((1, 200), (64, 20)):
        x = rng.standard_normal((batch, plain.window_length, 3)).astype(np.float32)
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(rounds):
            for name, fn in cases.items():
                fn(x)
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn(x)
                times[name].append((time.perf_counter() - t0) / reps * 1e3)
        out[f"batch_{batch}_ms_p50"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    result = main(Path(args[0]), Path(args[1]), Path(args[2]), int(args[3]) if len(args) > 3 else 30)
    print(json.dumps(result, indent=2))

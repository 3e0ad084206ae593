"""Measure the bundled model's windows/s and ms per call by batch size on each execution
provider this box offers, and write the batch table the gateway reads for
``[batcher] max_batch = "auto"`` (``gateway/pipeline/batch_table.json``).

    .venv/bin/python bench/batch_table.py [--seconds 24] [--rounds 4] [--channels 3]
        [--batches 1,8,...,8192] [--providers cpu,cuda] [--out PATH] [--dry-run]
    .venv/bin/python bench/batch_table.py --issue-h200-cuda   # (re)write the documented CUDA entry

Timing: the gateway's own ModelRuntime on ``models/base`` (1 intra-op thread, as the
daemon), the same input per size, batch sizes in interleaved rounds (a busy neighbour slows
them alike), the round with the lowest median call time kept per size; windows/s is
batch / that median (robust to the process being descheduled on a shared box, which a
wall-clock count is not).
The choice per provider (max_batch, max_delay_ms) is ``gateway.pipeline.batching.
choose_from_rows`` on the measured rows, so the rule lives in one place.

Entries of providers not measured in this run are kept as they are in the table. The
CUDA entry shipped with the project is the issue-15 author's H200 table (written by
``--issue-h200-cuda``; its ms per call are derived as batch / windows_per_s, since only
windows/s were published): not reproduced on the development box, which has no GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

ISSUE_H200_CUDA = {  # issue 15: NVIDIA H200, onnxruntime-gpu 1.31.1, CUDA 13; windows/s only
    1: 3_243, 64: 236_988, 1_024: 2_609_287, 8_192: 10_179_160,
}
ISSUE_SOURCE = "issue 15's NVIDIA H200 figures, not reproduced here"
ISSUE_DETAILS = ("issue 15's table: NVIDIA H200, onnxruntime-gpu 1.31.1, CUDA 13, measured by the issue's author (TF32 on, "
                 "ONNX Runtime's default) and NOT reproduced on the development box, which has no GPU; only windows/s "
                 "were published, ms_per_call is derived as batch / windows_per_s")


def measure(provider: str, batches: list[int], channels: int, seconds: float, rounds: int,
            cuda_tf32: bool) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    from gateway.config import DEFAULT_MODEL_DIR
    from models.runtime import ModelRuntime

    rt = ModelRuntime.load(DEFAULT_MODEL_DIR, [provider], intra_op_threads=1, cuda_tf32=cuda_tf32)
    if rt.providers_in_use[0] != provider:
        print(f"{provider}: not serving here (session took {rt.providers_in_use[0]}); skipped")
        return None
    T = rt.window_length
    inputs = {b: np.random.default_rng(b).normal(size=(b, T, channels)).astype(np.float32) for b in batches}
    best: dict[int, tuple[float, float]] = {}
    per_size = seconds / rounds / len(batches)
    for _ in range(rounds):
        for b in batches:
            x = inputs[b]
            for _ in range(2):
                rt.run(x)
            times: list[float] = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < per_size or len(times) < 3:
                t = time.perf_counter()
                rt.run(x)
                times.append(time.perf_counter() - t)
            median_ms = float(np.median(times)) * 1000
            if median_ms < best.get(b, (0.0, float("inf")))[1]:
                best[b] = (b / median_ms * 1000, median_ms)
    rows = [{"batch": b, "windows_per_s": round(best[b][0], 1), "ms_per_call": round(best[b][1], 4)} for b in batches]
    meta = {"model": f"{rt.manifest.get('name', '?')} {rt.manifest.get('version', '?')}", "window_length": T}
    rt.close()
    return rows, meta


def entry(rows: list[dict[str, Any]], source: str, **extra: Any) -> dict[str, Any]:
    from gateway.pipeline.batching import Row, choose_from_rows

    max_batch, max_delay_ms = choose_from_rows([Row(r["batch"], r["windows_per_s"], r["ms_per_call"]) for r in rows])
    return {"max_batch": max_batch, "max_delay_ms": max_delay_ms, "source": source, **extra, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=24.0, help="total timed seconds per provider")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batches", default="1,8,16,32,64,128,256,512,1024,2048,4096,8192")
    ap.add_argument("--providers", default="cpu,cuda", help="short or full names; unavailable ones are skipped")
    ap.add_argument("--cuda-tf32", action="store_true", help="measure CUDA with TF32 on (the gateway's default is off)")
    ap.add_argument("--issue-h200-cuda", action="store_true", help="write the issue's H200 figures as the CUDA entry")
    ap.add_argument("--out", type=Path, default=None, help="table to update (default: the shipped table)")
    ap.add_argument("--dry-run", action="store_true", help="print, do not write")
    args = ap.parse_args()
    import onnxruntime as ort

    from gateway.pipeline.batching import TABLE_FORMAT, TABLE_PATH, load_table
    from models.providers import canonical_name

    out = args.out or TABLE_PATH
    table: dict[str, Any] = (json.loads(out.read_text(encoding="utf-8")) if out.is_file()
                             else {"format": TABLE_FORMAT, "providers": {}})
    table.setdefault("aliases", {"TensorrtExecutionProvider": "CUDAExecutionProvider"})
    print(machine())
    batches = [int(v) for v in args.batches.split(",")]
    today = dt.date.today().isoformat()
    if args.issue_h200_cuda:
        rows = [{"batch": b, "windows_per_s": float(r), "ms_per_call": round(b / r * 1000, 4)} for b, r in ISSUE_H200_CUDA.items()]
        table["providers"]["CUDAExecutionProvider"] = entry(rows, ISSUE_SOURCE, measured=False, details=ISSUE_DETAILS)
    else:
        for name in [canonical_name(p) for p in args.providers.split(",") if p.strip()]:
            if name not in ort.get_available_providers():
                print(f"{name}: not in this onnxruntime build ({', '.join(ort.get_available_providers())}); skipped")
                continue
            got = measure(name, batches, args.channels, args.seconds, args.rounds, args.cuda_tf32)
            if got is None:
                continue
            rows, meta = got
            source = f"measured by bench/batch_table.py on {today}"
            details = (f"onnxruntime {ort.__version__}, 1 intra-op thread, C={args.channels}, {meta['model']}, "
                       f"T={meta['window_length']}, {args.rounds} interleaved rounds, {args.seconds:g} s timed"
                       + (", TF32 on" if args.cuda_tf32 and name == "CUDAExecutionProvider" else ""))
            table["providers"][name] = entry(rows, source, measured=True, details=details, machine=machine())
            print(f"\n{name}  ({source}; {details})\n| batch | windows/s | ms per call |\n| ---: | ---: | ---: |")
            for r in rows:
                print(f"| {r['batch']} | {r['windows_per_s']:,.0f} | {r['ms_per_call']:.3f} |")
            e = table["providers"][name]
            print(f"choice: max_batch {e['max_batch']}, max_delay_ms {e['max_delay_ms']}")
    text = json.dumps(table, indent=2) + "\n"
    if args.dry_run:
        print(text)
        return
    out.write_text(text, encoding="utf-8")
    load_table(out)  # the gateway must be able to read what was written
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

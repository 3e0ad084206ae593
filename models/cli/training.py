"""``lora-gateway model pretrain | score | eval``: train the base model, score and evaluate CSVs.

Heavy imports (torch, matplotlib) happen inside the handlers, so building the parser
stays cheap and the daemon never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from models.cli.errors import UserError, train_extra_missing
from models.scoring.settings import settings_from
from models.datasets import (
    DatasetError,
    SeriesTable,
    load_csv,
)
from models.manifest import (
    Manifest,
    ManifestError,
    base_model_dir,
    load_manifest,
    verify_files,
    write_manifest,
)

DEFAULT_CALIBRATION_FRACTION = 0.15


def add_model_commands(model_sub: Any) -> None:
    """Add ``pretrain``, ``score`` and ``eval`` to the ``model`` command."""
    p = model_sub.add_parser("pretrain", help="train the base model from scratch (needs the [train] extra)")
    p.add_argument("--out", required=True, type=Path, help="directory to write the model files into")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shipped recipe's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the shipped recipe's)")
    p.add_argument("--quick", action="store_true", help="a small run (200 steps, 20k windows) for tests/smoke")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.set_defaults(func=cmd_pretrain)

    for name, helptext in (
        ("score", "score a CSV recording row by row as the daemon would; write scores and alerts as CSV"),
        ("eval", "score a labelled CSV and report precision/recall/F1 and false alarms, model beside PCA"),
    ):
        q = model_sub.add_parser(name, help=helptext)
        q.add_argument("csv", type=Path, help="CSV file (comma/semicolon/tab, header row)"
                       + ("; for eval also a folder: every *.csv under it is one run, counts pooled" if name == "eval" else ""))
        q.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped base model)")
        q.add_argument("--channels", default=None, help="comma-separated channel columns (default: every numeric column)")
        q.add_argument("--timestamp-column", default=None, help="timestamp column (default: auto-detected)")
        q.add_argument("--label-column", default=None, help="0/1 label column")
        q.add_argument(
            "--calibration-rows",
            type=int,
            default=None,
            help=f"rows of the initial normal stretch (default: {DEFAULT_CALIBRATION_FRACTION * 100:.0f} %% of the rows)",
        )
        q.add_argument("--raise-level", type=float, default=None, help="score at which an alert raises (default 1.0)")
        q.add_argument("--clear-level", type=float, default=None, help="score below which it clears")
        if name == "score":
            q.add_argument("--out", type=Path, default=None, help="output CSV (default: stdout)")
            q.set_defaults(func=cmd_score)
        else:
            q.add_argument("--windows", type=Path, default=None, help="NAB-style label windows JSON (instead of a label column)")
            q.add_argument("--report", type=Path, default=None, help="write a PNG report (needs matplotlib)")
            q.add_argument("--json", type=Path, default=None, help="write the metrics as JSON")
            q.add_argument(
                "--record",
                action="store_true",
                help="also record the metrics in the model's manifest.json (evaluation section)",
            )
            q.set_defaults(func=_eval)


def cmd_pretrain(args: argparse.Namespace) -> int:
    try:
        import peft  # noqa: F401 - the LoRA-input graph export needs it

        from models.adapters import ExportError
        from models.training.pretrain import Recipe, pretrain
    except ModuleNotFoundError as exc:
        raise UserError(train_extra_missing(exc.name)) from None
    recipe = Recipe(steps=200, train_windows=20_000) if args.quick else Recipe()
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be >= 1")
    try:
        manifest = pretrain(args.out, steps=args.steps, seed=args.seed, recipe=recipe, threads=args.threads)
    except ExportError as exc:
        raise UserError(str(exc)) from None
    tr, ex = manifest.training, manifest.export
    lora = manifest.extra.get("lora_graph") or {}
    print(
        f"trained {manifest.name} {manifest.version} in {args.out}: {tr['recipe']['steps']} steps, seed {tr['recipe']['seed']}, "
        f"loss {tr['loss_first_5pct']:.4f} -> {tr['loss_last_5pct']:.4f}, onnx parity {ex['parity_max_abs_diff']:.2g}, "
        f"LoRA-input graph {lora.get('file')} (no-adapter parity {lora.get('parity_no_adapter_max_abs_diff', float('nan')):.2g})"
    )
    return 0


def _record(args: argparse.Namespace, manifest: Manifest, rows: dict[str, Any], cal: int, n_rows: int) -> None:
    """Write the metrics into ``manifest.evaluation`` (manifest.json is not among the
    hashed files, so the model stays verified)."""
    directory = args.model or base_model_dir()
    key = f"{args.csv.name} (calibration rows {cal})"
    manifest.evaluation[key] = {
        "rows": n_rows,
        "labels": f"label column {args.label_column}" if args.label_column else f"windows {args.windows.name}",
        "metrics": {k: v.as_dict() for k, v in rows.items()},
        "command": " ".join(
            ["lora-gateway model eval", args.csv.name]
            + ([f"--label-column {args.label_column}"] if args.label_column else [f"--windows {args.windows.name}"])
            + ([f"--channels {args.channels}"] if args.channels else [])
            + [f"--calibration-rows {cal}"]
        ),
    }
    write_manifest(manifest, directory)
    print(f"recorded in {Path(directory) / 'manifest.json'} under {key!r}")


def _load_model(path: Path | None) -> tuple[Manifest, Any, Path]:
    directory = path or base_model_dir()
    try:
        manifest = load_manifest(directory)
    except ManifestError as exc:
        raise UserError(str(exc)) from None
    problems = verify_files(manifest, directory)
    if problems:
        raise UserError(f"model {directory} fails verification: {'; '.join(problems)}")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(Path(directory) / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    return manifest, session, Path(directory)


def _load_table(args: argparse.Namespace, path: Path | None = None) -> SeriesTable:
    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    try:
        return load_csv(path or args.csv, timestamp_column=args.timestamp_column, channels=channels,
                        label_column=args.label_column)
    except DatasetError as exc:
        raise UserError(str(exc)) from None


def _score(args: argparse.Namespace, table: SeriesTable, path: Path | None = None) -> tuple[Manifest, Any, dict[str, float], int]:
    from models.evaluate import score_recording

    manifest, session, _ = _load_model(args.model)
    settings = settings_from(manifest, **{"raise": args.raise_level, "clear": args.clear_level})
    if settings["clear"] > settings["raise"]:
        raise UserError("--clear-level must not exceed --raise-level")
    n = len(table)
    cal = args.calibration_rows if args.calibration_rows is not None else max(
        int(DEFAULT_CALIBRATION_FRACTION * n), manifest.window_length + 8
    )
    try:
        scores = score_recording(table.values, session, manifest.window_length, cal, settings)
    except ValueError as exc:
        raise UserError(f"{path.name}: {exc}" if path is not None else str(exc)) from None
    return manifest, scores, settings, cal


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4f}"


def cmd_score(args: argparse.Namespace) -> int:
    table = _load_table(args)
    _, s, _, _ = _score(args, table)
    header = ["row", "timestamp", "score", "alert", "pca_score", "pca_alert"]
    header += ["label"] if table.labels is not None else []
    header += [f"score_{c}" for c in table.channels]
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.out, "w", newline="")) if args.out else sys.stdout
        w = csv.writer(out)
        w.writerow(header)
        for i in range(len(table)):
            row: list[Any] = [i, repr(float(table.timestamps[i])), _fmt(float(s.score[i])), int(s.alert[i])]
            row += [_fmt(float(s.pca_score[i])), int(s.pca_alert[i])]
            row += [int(table.labels[i])] if table.labels is not None else []
            row += [_fmt(float(v)) for v in s.channel_scores[i]]
            w.writerow(row)
    if args.out:
        print(f"wrote {len(table)} rows to {args.out}: {int(s.alert.sum())} alert rows (PCA baseline {int(s.pca_alert.sum())})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from models.cli.evaluation import cmd_eval

    return cmd_eval(args)

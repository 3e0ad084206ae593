"""``lora-gateway model finetune`` and ``model export`` (need the ``[train]`` extra: torch, peft).

Heavy imports happen inside the handlers, so ``lora-gateway --help`` and the daemon never
load torch; without the extra the commands say how to install it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.cli.errors import UserError, train_extra_missing


def _train_imports() -> None:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UserError(train_extra_missing(exc.name)) from exc


def _default_base() -> Path:
    from models.manifest import base_model_dir

    return base_model_dir()


def _strengths(text: str) -> tuple[float, ...]:
    """``--strengths 1,0.5,0.25`` -> (1.0, 0.5, 0.25); each in (0, 1]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UserError(f"--strengths: {exc}") from exc
    if not values or any(not 0 < v <= 1 for v in values):
        raise UserError("--strengths: give fractions in (0, 1], strongest first, e.g. 1,0.5,0.25")
    return values


def cmd_finetune(args: argparse.Namespace) -> int:
    """Train a LoRA adapter on a site's CSV or recording."""
    _train_imports()
    import torch

    from models.finetune import finetune
    from models.integrity import IntegrityError
    from models.site_data import SiteDataError

    torch.set_num_threads(max(1, args.threads))
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    try:
        result = finetune(
            base_dir=args.base or _default_base(), data=Path(args.data), out_dir=Path(args.out),
            channels=channels, timestamp_column=args.timestamp_column, label_column=args.label_column,
            rank=args.rank, alpha=args.alpha, epochs=args.epochs, patience=args.patience, lr=args.lr,
            batch_size=args.batch_size, val_fraction=args.val_fraction, stride=args.stride, seed=args.seed,
            name=args.name, version=args.version, device_id=args.device, progress=not args.no_progress,
            label_weight=args.label_weight, label_margin=args.label_margin, train_rows=args.train_rows,
            gate=not args.skip_gate, feedback=args.feedback, feedback_weight=args.feedback_weight,
            level_shift=args.level_shift,
            anchor_weight=args.anchor_weight if args.anchor_weight is not None else (0.0 if args.feedback else 1.0),
            strengths=_strengths(args.strengths))
    except (SiteDataError, IntegrityError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    ev = result.manifest["evaluation"]
    print(f"adapter {args.name}@{args.version} written to {result.out_dir}")
    print(f"validation loss {result.val_loss_before:.5f} -> {result.val_loss_after:.5f} "
          f"({result.epochs_run} epochs, best {result.best_epoch})"
          + (f"; {ev['val_loss_exported']:.5f} at the strength exported" if "val_loss_exported" in ev else ""))
    sup = ev.get("supervised", {})
    if "adapter" in sup:
        b, a = sup["base"], sup["adapter"]
        print(f"validation detection (point-wise): F1 {b['f1']:.3f} -> {a['f1']:.3f}, "
              f"false-alarm rate {b['false_alarm_rate']:.4f} -> {a['false_alarm_rate']:.4f}")
    gate = ev.get("gate", {})
    if "adapter" in gate:
        b, a = gate["base"], gate["adapter"]
        print(f"validation false alarms (scorer calibrated on the training rows): {b['false_alarm_rate']:.4f} -> "
              f"{a['false_alarm_rate']:.4f}; normal windows over threshold {b['normal_windows_over_threshold']:.4f} -> "
              f"{a['normal_windows_over_threshold']:.4f}; mean log-score {b['log_score']:.3f} -> {a['log_score']:.3f}")
        print(f"exported at strength {gate['strength']:g} of the trained adapter"
              + "".join(f" (at {t['strength']:g}: {'; '.join(t['reasons'])})" for t in gate["tried"] if t["reasons"]))
    fb = result.manifest["training"].get("feedback")
    if fb is not None:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(fb["skipped"].items()))
        print(f"operator verdicts: {fb['used']['false_alarm']} false alarm(s), {fb['used']['confirmed']} confirmed "
              f"used of {fb['verdicts']}" + (f" (left out: {skipped})" if skipped else "")
              + f"; {fb['rows_marked_confirmed']} data rows labelled from confirmed alerts")
    for v in ev.get("feedback_gate", {}).get("verdicts", []):
        print(f"  alert {v['key']} ({v['label']}): score {v['base']['max_score']:.2f} -> {v['adapter']['max_score']:.2f}, "
              f"fires {'yes' if v['base']['fires'] else 'no'} -> {'yes' if v['adapter']['fires'] else 'no'}")
    if result.best_epoch == 0:
        print("warning: no epoch improved the validation loss; the adapter changes nothing")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export an adapter: LoRA-input base graph, .onnx_adapter file, merged (optionally int8) model."""
    _train_imports()
    import torch

    from models import adapters
    from models.integrity import IntegrityError

    torch.set_num_threads(1)
    base = Path(args.base) if args.base else _default_base()
    if not (args.lora_graph or args.adapter_file or args.merged):
        raise UserError("say what to export: --lora-graph, --adapter-file and/or --merged OUT_DIR")
    if (args.adapter_file or args.merged) and not args.adapter:
        raise UserError("--adapter-file and --merged need --adapter ADAPTER_DIR")
    try:
        if args.lora_graph:
            m = adapters.export_lora_graph(base, tolerance=args.tolerance, out_dir=args.lora_graph_out,
                                           version=args.version if args.lora_graph_out else None)
            where = args.lora_graph_out or base
            base = Path(where)  # further exports in this command use the base with the graph
            print(f"LoRA-input graph {m['lora_graph']['file']} added to {where} as {m['name']}@{m['version']} "
                  f"(no-adapter parity {m['lora_graph']['parity_no_adapter_max_abs_diff']:.2g})")
        if args.adapter_file:
            m = adapters.export_adapter_file(base, Path(args.adapter), tolerance=args.tolerance)
            info = m["export"]["onnx_adapter"]
            print(f"{Path(args.adapter) / info['file']}: parity vs peft {info['parity_max_abs_diff']:.2g}")
        if args.merged:
            m = adapters.export_merged(base, Path(args.adapter), Path(args.merged), int8=args.int8,
                                       tolerance=args.tolerance, int8_tolerance=args.int8_tolerance,
                                       name=args.name, version=args.version)
            print(f"merged model {m['name']}@{m['version']} in {args.merged}: parity vs peft "
                  f"{m['export']['parity_max_abs_diff']:.2g}" + (" (int8)" if args.int8 else ""))
    except (adapters.ExportError, IntegrityError, FileNotFoundError, json.JSONDecodeError) as exc:
        raise UserError(str(exc)) from exc
    return 0


def add_adapter_commands(model_sub: Any) -> None:
    """Add ``finetune`` and ``export`` to ``lora-gateway model``."""
    p = model_sub.add_parser("finetune", help="train a LoRA adapter on a site's data ([train] extra)",
                             description="Self-supervised LoRA fine-tuning on a site's normal readings; "
                                         "with a label column, anomalous rows of the training part are left "
                                         "out of the reconstruction loss and feed a supervised margin term; "
                                         "and detection metrics are reported. The adapter is refused (nothing "
                                         "written) when, on its own validation rows scored as the gateway would, "
                                         "it raises the false-alarm rate or lowers recall against the base. With --feedback, operators' "
                                         "false/confirmed verdicts on alerts train it too, and it is refused when it "
                                         "still fires on an alert marked false.")
    p.add_argument("--data", required=True, help="CSV (comma or semicolon; `lora-gateway record export` writes one), "
                   "or the gateway's recording: its directory or a .jsonl file")
    p.add_argument("--channels", required=True, help="comma-separated channel column names")
    p.add_argument("--timestamp-column", default=None,
                   help="timestamp column (default: auto-detected by name; none: rows in file order)")
    p.add_argument("--label-column", help="optional 0/1 (normal/anomaly) column")
    p.add_argument("--label-weight", type=float, default=0.1,
                   help="weight of the supervised term on the training part's labelled windows (0: off)")
    p.add_argument("--label-margin", type=float, default=2.0,
                   help="labelled windows are pushed to this multiple of the normal windows' 99th percentile")
    p.add_argument("--device", help="device id to train on, from a recording or a CSV with a device_id column "
                   "(needed when it holds several devices); with --feedback only that device's verdicts are used")
    p.add_argument("--base", type=Path, help="base model directory (default: the bundled base)")
    p.add_argument("--out", required=True, type=Path, help="adapter output directory")
    p.add_argument("--name", default="site-adapter", help="adapter name in its manifest (default site-adapter)")
    p.add_argument("--version", default="1", help="adapter version in its manifest (default 1)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha (scaling = alpha / rank)")
    p.add_argument("--epochs", type=int, default=30, help="most training epochs (default 30)")
    p.add_argument("--patience", type=int, default=4, help="early stopping: epochs without improvement")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 0.003)")
    p.add_argument("--batch-size", type=int, default=128, help="windows per training step (default 128)")
    p.add_argument("--skip-gate", action="store_true",
                   help="export even an adapter that does worse than the base on its validation rows "
                        "(for comparisons; the gate's figures are not computed)")
    p.add_argument("--feedback", type=Path, default=None, metavar="STATE_DIR",
                   help="a gateway's state dir: operators' false/confirmed verdicts (alert-feedback.jsonl) with the "
                        "readings kept around each alert train the adapter, and it is refused if it still fires on a "
                        "false alarm or no longer fires on a confirmed fault")
    p.add_argument("--feedback-weight", type=float, default=1.0,
                   help="weight of the operators' verdicts in the margin term (default 1; 0: gate only)")
    p.add_argument("--level-shift", type=float, default=1.0,
                   help="each training window is moved by a random level in +-this many stds, so the adapter "
                        "learns shapes, not the training rows' level (default 1; 0 turns it off)")
    p.add_argument("--anchor-weight", type=float, default=None,
                   help="weight of the term keeping the outputs on generic normal windows the base's "
                        "(default 1, or 0 with --feedback: the operators' verdicts are meant to move the "
                        "outputs, and the anchor held the marked false alarm above the threshold; 0 turns it off)")
    p.add_argument("--strengths", default="1,0.5,0.25",
                   help="fractions of the trained adapter the gate tries, strongest first; the first that passes "
                        "is exported (default 1,0.5,0.25; 1 = all or nothing)")
    p.add_argument("--train-rows", type=int, default=None,
                   help="use only the leading N rows (a device's calibration stretch); the rest is ignored")
    p.add_argument("--val-fraction", type=float, default=0.25, help="last part of the rows (by time) validates")
    p.add_argument("--stride", type=int, default=1, help="rows between window starts")
    p.add_argument("--seed", type=int, default=0, help="random seed of the training run (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)

    p = model_sub.add_parser("export", help="export adapters for ONNX Runtime, parity-checked ([train] extra)")
    p.add_argument("--base", type=Path, help="base model directory (default: the bundled base)")
    p.add_argument("--adapter", type=Path, help="adapter directory (PEFT files + manifest.json)")
    p.add_argument("--lora-graph", action="store_true", help="add the LoRA-input graph to the base directory")
    p.add_argument("--lora-graph-out", type=Path, metavar="OUT_DIR",
                   help="with --lora-graph: write a copy of the base (version <v>+lora) instead of changing it")
    p.add_argument("--adapter-file", action="store_true", help="write <name>.onnx_adapter into the adapter directory")
    p.add_argument("--merged", type=Path, metavar="OUT_DIR", help="write the adapter merged into the base")
    p.add_argument("--int8", action="store_true", help="with --merged: int8 dynamic quantisation")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max |ONNX Runtime - PyTorch| accepted")
    p.add_argument("--int8-tolerance", type=float, default=0.25, help="max |int8 ONNX Runtime - PyTorch| accepted with --int8 (default 0.25)")
    p.add_argument("--name", help="with --merged: model name (default <adapter>-merged[-int8])")
    p.add_argument("--version", help="with --merged: version (default: the adapter's); with --lora-graph-out: "
                   "the copy's version (default <base version>+lora)")
    p.set_defaults(func=cmd_export)

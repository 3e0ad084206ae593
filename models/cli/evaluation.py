"""``lora-gateway model eval``: one labelled CSV, or a folder of them with pooled counts.

Each file is scored as the daemon would (``models.evaluate.score_recording``), calibrating
on its own first ``--calibration-rows`` rows; point-wise metrics count the rows after
them. With a folder, every ``*.csv`` under it (sorted, recursively) is one run: a row per
file, then the pooled counts over all runs (one confusion matrix, not an average of F1s).
Beside the metrics it prints the declared ``false_alarm_target`` and what was achieved:
the fraction of evaluated *normal* windows that scored at or over the raise level, and the
fraction of normal rows under an open alarm (the false-alarm rate). ``--json`` writes the
settings that were really used (manifest thresholds after overrides), per-file and pooled
metrics, the channels and the columns left out as labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from models.cli.errors import UserError, train_extra_missing
from models.datasets import DatasetError, labels_from_windows, load_label_windows

PCA = "PCA T2+Q baseline"


def _labels(args: argparse.Namespace, table: Any, path: Path) -> np.ndarray:
    if args.windows is not None:
        if table.timestamp_column is None:
            raise UserError(f"{path.name}: --windows needs a timestamp column")
        try:
            return labels_from_windows(table.timestamps, load_label_windows(args.windows, path))
        except DatasetError as exc:
            raise UserError(str(exc)) from None
    assert table.labels is not None
    return np.asarray(table.labels, dtype=bool)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lora-edge-gateway")
    except PackageNotFoundError:
        return "unknown"


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.csv") if p.is_file())
        if not files:
            raise UserError(f"{path}: no .csv files in this folder")
        return files
    return [path]


def _row(name: str, m: Any) -> str:
    return (f"{name:<40} {m.precision:>9.3f} {m.recall:>7.3f} {m.f1:>6.3f} {m.false_alarm_rate:>11.4f} "
            f"{m.missed_alarm_rate:>7.3f} {m.events_detected:>3}/{m.events:<3}")


def cmd_eval(args: argparse.Namespace) -> int:
    from models.cli.training import _load_table, _record, _score
    from models.evaluate import point_metrics

    if (args.label_column is None) == (args.windows is None):
        raise UserError("give exactly one of --label-column or --windows")
    files = _files(args.csv)
    if len(files) > 1 and (args.record or args.report):
        raise UserError("--record and --report take one file, not a folder")
    per_file: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {"labels": [], "model": [], "pca": [], "over": []}
    manifest = settings = None
    table = labels = s = None
    print(f"{'file / detector':<40} {'precision':>9} {'recall':>7} {'F1':>6} {'false-alarm':>11} {'missed':>7} {'events':>7}")
    for path in files:
        table = _load_table(args, path)
        labels = _labels(args, table, path)
        manifest, s, settings, cal = _score(args, table, path)
        ev = s.evaluated
        model_m, pca_m = point_metrics(labels, s.alert, ev), point_metrics(labels, s.pca_alert, ev)
        normal = ev & ~labels
        over = np.nan_to_num(s.score[normal], nan=0.0) >= settings["raise"]
        pooled["labels"].append(labels[ev])
        pooled["model"].append(s.alert[ev])
        pooled["pca"].append(s.pca_alert[ev])
        pooled["over"].append(over)
        per_file.append({
            "file": str(path), "rows": len(table), "channels": table.channels, "excluded_columns": table.excluded,
            "calibration_rows": cal, "evaluated_rows": int(ev.sum()), "anomalous_rows": int(labels[ev].sum()),
            "normal_windows_over_threshold": round(float(over.mean()), 6) if over.size else 0.0,
            "metrics": {f"{manifest.name} {manifest.version}": model_m.as_dict(), PCA: pca_m.as_dict()},
        })
        name = path.name if len(files) == 1 else str(path.relative_to(args.csv))
        excluded = f"; not channels (label-like): {', '.join(table.excluded)}" if table.excluded else ""
        print(f"{name}: {len(table)} rows, {len(table.channels)} channel(s), calibration rows {cal}, evaluated rows "
              f"{int(ev.sum())} ({int(labels[ev].sum())} anomalous){excluded}")
        print(_row(f"  {manifest.name} {manifest.version}", model_m))
        print(_row(f"  {PCA}", pca_m))
    assert manifest is not None and settings is not None
    y = np.concatenate(pooled["labels"])
    model_all, pca_all = point_metrics(y, np.concatenate(pooled["model"])), point_metrics(y, np.concatenate(pooled["pca"]))
    over_all = np.concatenate(pooled["over"])
    if len(files) > 1:
        print(f"pooled over {len(files)} files: {int(y.size)} evaluated rows ({int(y.sum())} anomalous)")
        print(_row(f"  {manifest.name} {manifest.version}", model_all))
        print(_row(f"  {PCA}", pca_all))
    print("point-wise metrics over the evaluated rows (no point adjustment); events = labelled runs with >= 1 alert")
    target = settings["false_alarm_target"]
    window_rate = float(over_all.mean()) if over_all.size else 0.0
    stated = f"{target * 100:.3g} % of normal windows (one in {1 / target:,.0f})" if target > 0 else \
        "none (false_alarm_target 0: in-sample quantile thresholds)"
    print(f"false-alarm target: {stated}; achieved: {window_rate * 100:.3g} % of normal windows at or over "
          f"{settings['raise']:g}, {model_all.false_alarm_rate * 100:.3g} % of normal rows alarmed")
    metrics = {f"{manifest.name} {manifest.version}": model_all, PCA: pca_all}
    if args.json:
        cals = sorted({f["calibration_rows"] for f in per_file})
        # the readings calibration and the score profile both use each file's calibration
        # rows, not the manifest's calibration_steps/_windows (those are the daemon's)
        used = {**settings, "calibration_steps": cals[0] if len(cals) == 1 else "per file",
                "calibration_windows": cals[0] - manifest.window_length + 1 if len(cals) == 1 else "per file"}
        args.json.write_text(json.dumps({
            "lora_gateway_version": _version(),
            "file": str(args.csv), "files": per_file, "rows": sum(f["rows"] for f in per_file),
            "channels": per_file[0]["channels"] if len(files) == 1 else sorted({c for f in per_file for c in f["channels"]}),
            "calibration_rows": per_file[0]["calibration_rows"] if len(files) == 1 else None,
            "label_source": f"column {args.label_column}" if args.label_column else f"windows {args.windows}",
            "model": f"{manifest.name}@{manifest.version}", "model_dir": str(args.model or "bundled base"),
            "settings": used, "false_alarm_target": target,
            "achieved": {"normal_windows_over_threshold": round(window_rate, 6),
                         "false_alarm_rate": model_all.false_alarm_rate},
            "metrics": {k: v.as_dict() for k, v in metrics.items()},
        }, indent=2) + "\n")
    if args.record:
        assert table is not None
        _record(args, manifest, metrics, per_file[0]["calibration_rows"], len(table))
    if args.report:
        from models.report import write_report

        assert table is not None and labels is not None and s is not None
        try:
            write_report(args.report, table, labels, s, title=f"{args.csv.name}: {manifest.name} {manifest.version}")
        except ModuleNotFoundError as exc:
            raise UserError(train_extra_missing(exc.name)) from None
        print(f"wrote {args.report}")
    return 0

"""All 58 NAB series, point-wise F1 and false-alarm rate per category, model beside PCA.

    .venv/bin/python bench/nab_categories.py [--nab /work/shared/datasets/nab] [--set KEY=VALUE ...]

Each series is scored as ``lora-gateway model eval SERIES --windows combined_windows.json``
scores it: calibration on its first 15 % of rows (NAB's probationary period), then every
later row counts once (no point adjustment). Counts are pooled per category (one confusion
matrix). Also prints the alarmed rows of every ``artificialNoAnomaly`` series (all false),
and the share of normal windows at or over the threshold beside the declared
``false_alarm_target``. ``--set false_alarm_target=0 --set score_margin=1.5 --set
level_follow=0 --set calibration_trim=0.2 --set adapt_calm=0 --set fold_shrinkage=0 --set
threshold_confidence=0`` gives the scoring before issue 11. Not a timed test: a report for docs/models.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.datasets import labels_from_windows, load_csv, load_label_windows  # noqa: E402
from models.evaluate import point_metrics, score_recording  # noqa: E402
from models.export import onnx_session  # noqa: E402
from models.manifest import base_model_dir, load_manifest  # noqa: E402
from models.scoring.settings import settings_from  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nab", type=Path, default=Path("/work/shared/datasets/nab"))
    ap.add_argument("--model", type=Path, default=base_model_dir())
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting")
    args = ap.parse_args()
    manifest = load_manifest(args.model)
    session = onnx_session(args.model / "model.onnx")
    settings = settings_from(manifest, **{k: float(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    t = manifest.window_length
    windows_json = args.nab / "labels" / "combined_windows.json"
    pooled: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    quiet: list[str] = []
    for path in sorted((args.nab / "data").glob("*/*.csv")):
        category = path.parent.name
        table = load_csv(path)
        labels = labels_from_windows(table.timestamps, load_label_windows(windows_json, path))
        cal = max(int(0.15 * len(table)), t + 8)
        r = score_recording(table.values, session, t, cal, settings)
        ev = r.evaluated
        pooled[category]["y"].append(labels[ev])
        pooled[category]["model"].append(r.alert[ev])
        pooled[category]["pca"].append(r.pca_alert[ev])
        pooled[category]["over"].append(np.nan_to_num(r.score[ev & ~labels]) >= settings["raise"])
        if category == "artificialNoAnomaly":
            quiet.append(f"  {path.name}: {int(r.alert[ev].sum())} alarmed rows of {int(ev.sum())} "
                         f"(PCA {int(r.pca_alert[ev].sum())})")
    print(f"false_alarm_target {settings['false_alarm_target']:g}; calibration: first 15 % of each series")
    print("| category | series | model F1 | model false-alarm | PCA F1 | PCA false-alarm | normal windows >= 1 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    total: dict[str, list[np.ndarray]] = defaultdict(list)
    for category in sorted(pooled):
        p = pooled[category]
        y = np.concatenate(p["y"])
        m, b = point_metrics(y, np.concatenate(p["model"])), point_metrics(y, np.concatenate(p["pca"]))
        over = float(np.concatenate(p["over"]).mean())
        for k in ("y", "model", "pca", "over"):
            total[k].extend(p[k])
        print(f"| {category} | {len(p['y'])} | {m.f1:.3f} | {m.false_alarm_rate:.4f} | {b.f1:.3f} | "
              f"{b.false_alarm_rate:.4f} | {over:.4f} |")
    y = np.concatenate(total["y"])
    m, b = point_metrics(y, np.concatenate(total["model"])), point_metrics(y, np.concatenate(total["pca"]))
    print(f"| all | {len(total['y'])} | {m.f1:.3f} | {m.false_alarm_rate:.4f} | {b.f1:.3f} | {b.false_alarm_rate:.4f} | "
          f"{float(np.concatenate(total['over']).mean()):.4f} |")
    print("artificialNoAnomaly (every alarm is false):")
    print("\n".join(quiet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

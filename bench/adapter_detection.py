"""Does a site adapter detect better? Base vs self-supervised adapter vs supervised adapter vs PCA.

    .venv/bin/python bench/adapter_detection.py [--seeds 7,1,2,3] [--epochs 30] [--out DIR]
        [--level-shift 1] [--anchor-weight 1]
        [--calibrate-on clean|training] [--base-only] [--set KEY=VALUE ...]

Each site is ``models.example_site`` with another seed (seed 7 is the shipped example):
a cold room (temperature, humidity, 5-minute readings, a compressor duty cycle the base
never saw), 4032 rows, 4 labelled faults after the first half. For each site it runs
``models.finetune.finetune`` twice with the same recipe as the shipped example adapter
(rank 8, alpha 16, 30 epochs, seed 0, time-ordered 75/25 split): once with
``label_weight=0`` (self-supervised only) and once with the supervised term on the
training part's labels. Reported: the point-wise metrics on the validation rows (the last
25 %, never trained on) that finetune writes into each adapter's manifest (the gateway's
scoring; base, adapter and PCA baseline calibrated on the same rows), and the
component-wise separation (AUC, labelled vs normal validation rows) of the scorer's
residual and distance statistics. Torch on 1 thread; about 1-2 minutes per site.

The adapters are taken at full strength and ungated (``gate=False``: the figures of an
adapter the gate would refuse are still shown); ``--level-shift 0 --anchor-weight 0`` trains
them with the recipe before issue 11 point 3.

``--calibrate-on training`` calibrates the scorer on all training rows instead, faults
included (what a real site gives when nobody checked its first weeks); ``--base-only``
skips the adapters (base and PCA only, seconds per site); ``--set`` overrides a scoring
setting (e.g. ``--set calibration_trim=0`` for the scorer without calibration trimming).
The metrics are then computed here with ``models.evaluate.score_recording`` (what
finetune's report runs) on the chosen calibration rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models import integrity  # noqa: E402
from models.adapter_gate import TorchSession  # noqa: E402
from models.architecture import load_model  # noqa: E402
from models.evaluate import point_metrics, run_model, score_recording, sliding_windows  # noqa: E402
from models.example_site import write_example_site_csv  # noqa: E402
from models.finetune import finetune, load_peft, scorer_calibration_rows  # noqa: E402
from models.manifest import base_model_dir  # noqa: E402
from models.scoring.calibration import SeriesCalibration, fill_forward  # noqa: E402
from models.scoring.scorer import DeviceScoreState, WindowScorer  # noqa: E402
from models.scoring.settings import settings_from  # noqa: E402
from models.site_data import load_site_data  # noqa: E402

CHANNELS = ["temperature_c", "humidity_pct"]


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a labelled row's statistic exceeds a normal row's (ties count half)."""
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    ranks = np.concatenate([pos, neg]).argsort().argsort() + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def separation(model: torch.nn.Module, values: np.ndarray, labels: np.ndarray, split: int, cal: int,
               T: int, settings: dict[str, float]) -> dict[str, float]:
    """AUC of the raw residual (max over channels) and of the embedding distance on rows >= split."""
    x = fill_forward(values)
    calib = SeriesCalibration(x.shape[1], cal)
    calib.update(values[:cal])
    windows = sliding_windows(calib.standardize(x), T)
    session = TorchSession(model)
    scorer, state = WindowScorer(None, **settings), DeviceScoreState(x.shape[1])
    cal_windows = calib.calibration_windows(T)
    scorer.calibrate_windows(state, cal_windows, run_model(session, cal_windows))
    first = split - T + 1  # the window ending at row `split`
    outputs = run_model(session, windows[cal - T + 1:])
    res = scorer.score_details(windows[cal - T + 1:], outputs, [state] * (len(windows) - cal + T - 1))
    keep = slice(first - (cal - T + 1), None)
    y = labels[split:]
    return {"residual_auc": auc(res.residual.max(1)[keep][y], res.residual.max(1)[keep][~y]),
            "distance_auc": auc(res.distance[keep][y], res.distance[keep][~y]),
            "score_auc": auc(res.score[keep][y], res.score[keep][~y])}


def site_metrics(model: torch.nn.Module, values: np.ndarray, labels: np.ndarray, split: int, cal: int, T: int,
                 settings: dict[str, float], with_pca: bool) -> tuple[dict[str, float | int], dict[str, float | int]]:
    """Point-wise metrics of the model and the PCA baseline on rows >= split, the scorer
    calibrated on the first ``cal`` rows (what finetune's report runs)."""
    s = score_recording(values, TorchSession(model), T, calibration_rows=cal, settings=settings, with_pca=with_pca)
    evaluated = np.arange(len(labels)) >= split
    return (point_metrics(labels, s.alert, evaluated).as_dict(), point_metrics(labels, s.pca_alert, evaluated).as_dict())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="7,1,2,3", help="example-site seeds (7 = the shipped example)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None, help="keep the CSVs and adapters here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    ap.add_argument("--label-weight", type=float, default=0.1, help="weight of the supervised term")
    ap.add_argument("--level-shift", type=float, default=1.0,
                    help="finetune's level augmentation (0: the recipe before issue 11 point 3)")
    ap.add_argument("--anchor-weight", type=float, default=1.0,
                    help="finetune's anchor to the base's outputs (0: the recipe before issue 11 point 3)")
    ap.add_argument("--calibrate-on", choices=("clean", "training"), default="clean",
                    help="scorer calibration rows: the training rows before the first fault, or all of them")
    ap.add_argument("--base-only", action="store_true", help="no adapters: the base model and PCA only")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = base_model_dir()
    manifest = integrity.load_manifest(Path(base))
    T = int(manifest["window_length"])
    settings = settings_from(manifest, **{k: float(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    own_metrics = args.calibrate_on != "clean" or bool(args.set) or args.base_only
    root = args.out or Path(tempfile.mkdtemp(prefix="adapter-detection-"))
    results = []
    print(f"{'site':<8} {'detector':<16} {'precision':>9} {'recall':>7} {'F1':>6} {'false-alarm':>11} {'events':>7}"
          f" {'resid AUC':>9} {'dist AUC':>8} {'score AUC':>9}")
    for seed in (int(s) for s in args.seeds.split(",")):
        csv_path = root / f"site-{seed}.csv"
        write_example_site_csv(csv_path, seed=seed)
        data = load_site_data(csv_path, CHANNELS, "time", "fault")
        row: dict[str, object] = {"seed": seed}
        assert data.labels is not None
        split = round(len(data.labels) * 0.75)  # finetune's default time-ordered split
        cal = split if args.calibrate_on == "training" else scorer_calibration_rows(data.labels, split)

        labels = data.labels

        def metrics(model: torch.nn.Module, with_pca: bool) -> tuple[dict[str, float | int], dict[str, float | int]]:
            return site_metrics(model, data.values, labels, split, cal, T, settings, with_pca)  # noqa: B023

        if args.base_only:
            base_model = load_model(base)
            mb, mp = metrics(base_model, True)
            row.update(base={**mb, **separation(base_model, data.values, data.labels, split, cal, T, settings)},
                       pca=mp, calibration_rows=cal)
        for variant, weight in (() if args.base_only else
                                (("self-supervised", 0.0), ("supervised", args.label_weight))):
            res = finetune(base, data, root / f"site-{seed}-{variant}", rank=8, alpha=16, epochs=args.epochs,
                           seed=0, name=f"site-{seed}", label_weight=weight, progress=False, gate=False,
                           level_shift=args.level_shift, anchor_weight=args.anchor_weight)
            sup = res.manifest["evaluation"]["supervised"]
            assert split == res.manifest["training"]["split"]["train_rows"]
            adapted = load_peft(base, res.out_dir)
            if own_metrics:
                sup = {"adapter": metrics(adapted, False)[0], "base": None, "pca": None}
                if variant == "self-supervised":
                    sup["base"], sup["pca"] = metrics(load_model(base), True)
            else:
                assert cal == sup["calibration_rows"]
            row[variant] = {**sup["adapter"], **separation(adapted, data.values, data.labels, split, cal, T, settings),
                            "label_objective": res.manifest["training"]["label_objective"],
                            "val_loss": [res.val_loss_before, res.val_loss_after]}
            if variant == "self-supervised":
                row["base"] = {**sup["base"],
                               **separation(load_model(base), data.values, data.labels, split, cal, T, settings)}
                row["pca"] = sup["pca"]
                row["calibration_rows"] = cal
        results.append(row)
        for name in ("base", "pca") if args.base_only else ("base", "self-supervised", "supervised", "pca"):
            m = row[name]
            assert isinstance(m, dict)
            extra = (f" {m['residual_auc']:>9.3f} {m['distance_auc']:>8.3f} {m['score_auc']:>9.3f}"
                     if "residual_auc" in m else "")
            print(f"{seed:<8} {name:<16} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
                  f"{m['false_alarm_rate']:>11.4f} {m['events_detected']:>3}/{m['events']:<3}{extra}", flush=True)
    print("validation rows only (last 25 %, never trained on); scorer calibrated on "
          + ("all training rows (faults included)" if args.calibrate_on == "training"
             else "the training rows before the first labelled fault")
          + "; AUC = labelled vs normal validation rows" + (f"; settings {' '.join(args.set)}" if args.set else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

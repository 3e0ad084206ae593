"""Cross-channel statistics on the plant look-alike, scored next to the model (issue 11; seeded).

    .venv/bin/python bench/plant_lookalike.py --set cross_channel=1   # the wired statistic
    .venv/bin/python bench/cross_channel_probe.py [--runs 34]          # the variants it was chosen from

The scratch measurement behind ``models.scoring.cross``: per run of ``bench/plant_lookalike.py``
the model's window scores (defaults), and beside them a model-free statistic of the
standardised readings (level offsets applied as ``model score`` applies them,
``follow_offsets``; frozen standardisation: ``--frozen``): features per window (``mean``: each
channel's window mean, ``last``: its newest reading, ``last8``: the mean of its newest 8),
statistic (``mahal``: the Mahalanobis distance to the calibration windows' shrunk covariance,
``cond``: the largest squared conditional residual, each channel against what the others
predict), threshold from held-out calibration values (5 folds) at the declared
``false_alarm_target``, its upper ``threshold_confidence`` bound, on its own (not joined with
the model's statistics as the scorer joins it). Prints its mean per-run AUC, the pooled F1 /
false-alarm rate of the statistic alone and of max(model score, statistic), and the same at
half the threshold (a ceiling: what a lower threshold would buy, not a setting).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plant_lookalike import run  # noqa: E402

from models.evaluate import alert_flags, fill_missing, point_metrics, score_recording, sliding_windows  # noqa: E402
from models.export import onnx_session  # noqa: E402
from models.manifest import base_model_dir, load_manifest  # noqa: E402
from models.scoring.calibration import SeriesCalibration  # noqa: E402
from models.scoring.level import follow_offsets  # noqa: E402
from models.scoring.profile import fit_profile, profile_shrinkage  # noqa: E402
from models.scoring.settings import settings_from  # noqa: E402
from models.scoring.tail import fold_slices, tail_quantile_bound  # noqa: E402

CAL = 400


def features(z: np.ndarray, t: int, kind: str) -> np.ndarray:
    w = sliding_windows(z, t)  # window i ends at row i + t - 1
    return {"mean": lambda: w.mean(1), "last": lambda: w[:, -1, :], "last8": lambda: w[:, -8:].mean(1)}[kind]()


def statistic(f: np.ndarray, prof: tuple, how: str) -> np.ndarray:  # type: ignore[type-arg]
    mu, basis, inv_eig, inv_rest = prof
    p = (basis * (inv_eig - inv_rest)) @ basis.T + inv_rest * np.eye(f.shape[1])
    d = f - mu
    if how == "mahal":
        return np.einsum("nc,cd,nd->n", d, p, d) / f.shape[1]
    e = d @ p
    return (e * e / np.diag(p)).max(axis=1)


def ratio(f: np.ndarray, n_cal: int, how: str, settings: dict[str, float], t: int) -> np.ndarray:
    cal = f[:n_cal]
    held = statistic(cal, fit_profile(cal, settings), how)
    lam = profile_shrinkage(cal, settings)
    for train, block in fold_slices(n_cal, 5, t):
        if train.size >= 8:
            held[block] = statistic(cal[block], fit_profile(cal[train], settings, lam), how)
    q = tail_quantile_bound(held, settings["false_alarm_target"], settings["threshold_confidence"], t, True,
                            xi_max=settings["tail_shape_max"])
    return statistic(f, fit_profile(cal, settings), how) / q


def auc(s: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(s, kind="stable")
    r = np.empty(s.size)
    r[order] = np.arange(1, s.size + 1)
    n1, n0 = int(y.sum()), int(y.size - y.sum())
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=34)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--frozen", action="store_true", help="no level offsets on the statistic's readings")
    args = ap.parse_args()
    mdir = base_model_dir()
    manifest = load_manifest(mdir)
    session = onnx_session(mdir / "model.onnx")
    settings, t = settings_from(manifest), manifest.window_length
    recordings = []
    for i in range(args.runs):
        x, y = run(args.seed + i)
        cal = SeriesCalibration(x.shape[1], CAL)
        cal.update(x[:CAL])
        z = cal.standardize(fill_missing(x))
        if not args.frozen:
            z = z - follow_offsets(z, CAL, t, settings["level_follow"])
        recordings.append((y, score_recording(x, session, t, CAL, settings, with_pca=False).score, z))
    y_all = np.concatenate([y[CAL:] for y, _, _ in recordings])
    base = point_metrics(y_all, np.concatenate([alert_flags(s, settings)[CAL:] for _, s, _ in recordings]))
    print(f"{args.runs} runs; model alone F1 {base.f1:.3f} false-alarm {base.false_alarm_rate:.3f} "
          f"missed {base.missed_alarm_rate:.3f}; level offsets {'off' if args.frozen else 'on'}")
    print("| features | statistic | AUC | alone F1 / FA | with the model F1 / FA (missed) | half threshold: with the model |")
    print("| --- | --- | ---: | --- | --- | --- |")
    for kind in ("mean", "last", "last8"):
        for how in ("mahal", "cond"):
            aucs, alone, comb, half = [], [], [], []
            for y, score, z in recordings:
                r = np.full(len(y), np.nan)
                r[t - 1:] = ratio(features(z, t, kind).astype(np.float64), CAL - t + 1, how, settings, t)
                aucs.append(auc(r[CAL:], y[CAL:]))
                alone.append(alert_flags(r, settings)[CAL:])
                comb.append(alert_flags(np.fmax(score, r), settings)[CAL:])
                half.append(alert_flags(np.fmax(score, 2 * r), settings)[CAL:])
            a, c, h = (point_metrics(y_all, np.concatenate(v)) for v in (alone, comb, half))
            print(f"| {kind} | {how} | {np.nanmean(aucs):.3f} | {a.f1:.3f} / {a.false_alarm_rate:.3f} | "
                  f"{c.f1:.3f} / {c.false_alarm_rate:.3f} ({c.missed_alarm_rate:.3f}) | "
                  f"{h.f1:.3f} / {h.false_alarm_rate:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the plant look-alike's missed and false alarms are, by cause and by anomaly kind (issue 11; seeded).

    .venv/bin/python bench/recall_breakdown.py [--runs 34] [--set KEY=VALUE ...]
    .venv/bin/python bench/recall_breakdown.py --probe channel-distance     # measured, not kept
    .venv/bin/python bench/recall_breakdown.py --probe calibrated-rate      # measured, not kept
    .venv/bin/python bench/recall_breakdown.py --clear-halflife 2           # measured, not kept

Scores each run of ``bench/plant_lookalike.py`` as ``model score --calibration-rows 400``
does (``models.evaluate.score_recording``) and splits, per anomaly kind of the generator
(valve, cavitation, subtle), the missed anomalous rows into never-detected runs, onset
delay and alarms that cleared inside a run, and the false alarms into before the first
anomaly, the drain after an anomaly's end and the rest (``models.evaluate.alarm_breakdown``).
It also says which statistic carried the score on the detected rows and on the drain (the
residual, with the flatline check, or the embedding distance; the cross-channel statistic
when ``--set cross_channel=1``).

Without a probe the missed and false rows come from ``score_recording`` itself (the
daemon's per-window scoring, bench/RESULTS.md 26). Which statistic carried a score, and the
probes, come from ``score_loop``: the per-block steps ``score_recording`` took before
RESULTS 26 (blocks of 64 windows sharing one level hold and one profile state), which
keep each statistic apart; the number of rows where its score differs from
``score_recording``'s is printed. The probes add one change each to that loop, scratch
measurements behind docs/models.md "Fifth pass" (compare a probe with ``--probe none
--loop``, the loop's own figures):

- ``channel-distance``: a per-channel embedding distance beside the model's statistics:
  each channel's D-dim embedding against its own calibrated profile (fitted and cross-fitted
  as the device's joint profile is), each scaled by its held-out tail quantile at
  ``false_alarm_target``, the maximum's upper ``threshold_confidence`` bound as one joint
  factor (its own threshold, not joined with the model's); it enters ``channel_scores`` and
  the score, and so the level hold.
- ``calibrated-rate``: the level tracker's bound per channel is the larger of
  ``level_follow`` and the calibration stretch's own trend (least-squares slope of the
  standardised readings, in calibration stds per calibration length): legitimate change
  as fast as the calibration showed is followed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plant_lookalike import run  # noqa: E402

from models.evaluate import (  # noqa: E402
    AlarmBreakdown,
    alarm_breakdown,
    alert_flags,
    fill_missing,
    point_metrics,
    run_model,
    score_recording,
    sliding_windows,
)
from models.export import onnx_session  # noqa: E402
from models.manifest import base_model_dir, load_manifest  # noqa: E402
from models.scoring.calibration import SeriesCalibration  # noqa: E402
from models.scoring.level import LevelTracker, window_level  # noqa: E402
from models.scoring.profile import fit_profile, profile_distance, profile_shrinkage  # noqa: E402
from models.scoring.scorer import DeviceScoreState, WindowScorer  # noqa: E402
from models.scoring.settings import settings_from  # noqa: E402
from models.scoring.tail import fold_slices, tail_quantile, tail_quantile_bound  # noqa: E402

CAL = 400
STREAM_BATCH = 64  # score_loop's block: what score_recording used before bench/RESULTS.md 26
KINDS = ("valve", "cavitation", "subtle")


def channel_profiles(emb: np.ndarray, settings: Mapping[str, float], gap: int) -> tuple[list[Any], np.ndarray]:
    """Per-channel profiles of calibration embeddings ``[M, C, D]`` and the per-channel thresholds ``[C]``."""
    m, c, _ = emb.shape
    held, profiles = np.zeros((m, c)), []
    for j in range(c):
        f = emb[:, j].astype(np.float64)
        prof = fit_profile(f, settings)
        profiles.append(prof)
        held[:, j] = profile_distance(f, *prof)
        lam = profile_shrinkage(f, settings)
        for train, block in fold_slices(m, int(settings["calibration_folds"]), gap):
            if train.size >= 8:
                held[block, j] = profile_distance(f[block], *fit_profile(f[train], settings, lam))
    alpha, xi = settings["false_alarm_target"], settings["tail_shape_max"]
    scale = np.array([max(tail_quantile(held[:, j], alpha, True, xi_max=xi), 1e-3) for j in range(c)])
    q = tail_quantile_bound((held / scale).max(axis=1), alpha, settings["threshold_confidence"], gap, True, xi_max=xi)
    return profiles, scale * max(q, 1.0)


def score_loop(x: np.ndarray, session: Any, t: int, settings: Mapping[str, float], probe: str) -> dict[str, np.ndarray]:
    """The per-block steps (one level hold and one profile state per 64 windows), keeping
    which statistic carried each score; ``probe`` adds one change."""
    n_rows, c = x.shape
    cal = SeriesCalibration(c, CAL)
    cal.update(x[:CAL])
    z = cal.standardize(fill_missing(x))
    windows, n_cal = sliding_windows(z, t), CAL - t + 1
    scorer = WindowScorer(None, **dict(settings))
    cal_windows = cal.calibration_windows(t)
    cal.release()
    state = DeviceScoreState(c)
    cal_out = run_model(session, cal_windows)
    scorer.calibrate_windows(state, cal_windows, cal_out)
    if probe == "channel-distance":
        profiles, thr = channel_profiles(cal_out["embedding"], settings, t)
    tracker = LevelTracker(c, CAL, settings["level_follow"])
    if probe == "calibrated-rate":
        tt = np.arange(CAL) - (CAL - 1) / 2
        slope = np.abs(tt @ (z[:CAL] - z[:CAL].mean(axis=0))) / (tt @ tt) * CAL
        tracker.step = np.maximum(settings["level_follow"], slope) / CAL
    levels = window_level(windows[n_cal:])
    score = np.full(n_rows, np.nan)
    carrier = np.full(n_rows, "", dtype=object)
    channel = np.full(n_rows, -1)
    for start in range(n_cal, len(windows), STREAM_BATCH):
        part = slice(start, min(start + STREAM_BATCH, len(windows)))
        offsets = tracker.update(levels[part.start - n_cal : part.stop - n_cal])
        batch = windows[part] - offsets[:, None, :].astype(np.float32)
        out = run_model(session, batch)
        res = scorer.score_details(batch, out, [state] * len(batch))
        sc, cs = res.score.astype(np.float64), res.channel_scores.astype(np.float64)
        who = np.where(res.distance_ratio >= sc, "distance", "residual")
        if settings["cross_channel"] > 0 and state.cross is not None:
            resid = res.residual / state.residual_threshold
            who = np.where((who == "residual") & (resid.max(axis=1) < sc * (1 - 1e-6)), "cross", who)
        if probe == "channel-distance":
            emb = out["embedding"]
            cd = np.stack([profile_distance(emb[:, j].astype(np.float64), *profiles[j]) for j in range(c)], axis=1) / thr
            who = np.where(cd.max(axis=1) > sc, "channel-distance", who)
            cs, sc = np.maximum(cs, cd), np.maximum(sc, cd.max(axis=1))
        rows = slice(part.start + t - 1, part.stop + t - 1)
        score[rows], carrier[rows], channel[rows] = sc, who, np.argmax(cs, axis=1)
        tracker.hold_from(float(sc[-1]), cs[-1], settings["level_hold"])
    return {"score": score, "carrier": carrier, "channel": channel}


def two_score_flags(raise_scores: np.ndarray, clear_scores: np.ndarray, settings: Mapping[str, float]) -> np.ndarray:
    """``models.scoring.decision.debounced_flags`` with the clear test on ``clear_scores``."""
    raised, streak, out = False, 0, np.zeros(len(raise_scores), dtype=bool)
    for i, (r, c) in enumerate(zip(raise_scores, clear_scores)):
        if not np.isnan(r):
            if (c < settings["clear"]) if raised else (r >= settings["raise"]):
                streak += 1
                if streak >= int(settings["clear_after"] if raised else settings["raise_after"]):
                    raised, streak = not raised, 0
            else:
                streak = 0
        out[i] = raised
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=34)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting")
    ap.add_argument("--probe", choices=("none", "channel-distance", "calibrated-rate"), default="none")
    ap.add_argument("--clear-halflife", type=float, default=0.0, metavar="H",
                    help="an open alarm may also clear on the score with recency_halflife H (0: off)")
    ap.add_argument("--loop", action="store_true",
                    help="without a probe: alarms from score_loop (the baseline of a probe) instead of score_recording")
    args = ap.parse_args()
    mdir = base_model_dir()
    manifest = load_manifest(mdir)
    session = onnx_session(mdir / "model.onnx")
    settings = settings_from(manifest, **{k: float(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    t = manifest.window_length
    per_kind: dict[str, AlarmBreakdown] = {}
    rows: dict[str, list[int]] = {}
    blamed: dict[str, np.ndarray] = {}
    carried: dict[str, dict[str, int]] = {"detected": {}, "drain": {}}
    ys, alerts, differ = [], [], 0
    for i in range(args.runs):
        info: dict[str, Any] = {}
        x, y = run(args.seed + i, info)
        loop = score_loop(x, session, t, settings, args.probe)
        a = alert_flags(loop["score"], settings)
        if args.probe == "none":
            rec = score_recording(x, session, t, CAL, settings, with_pca=False)
            differ += int(np.sum(~np.isclose(rec.score, loop["score"], rtol=1e-5, equal_nan=True)))
            if not args.loop:
                a = rec.alert
                loop["channel"] = np.argmax(np.nan_to_num(rec.channel_scores, nan=-np.inf), axis=1)
        if args.clear_halflife > 0:
            short = score_loop(x, session, t, {**settings, "recency_halflife": args.clear_halflife}, args.probe)
            a = two_score_flags(loop["score"], np.fmin(loop["score"], short["score"]), settings)
        ev = np.arange(len(y)) >= CAL
        kind = KINDS[info["kind"]]
        b = alarm_breakdown(y, a, ev)
        per_kind[kind] = per_kind.get(kind, AlarmBreakdown()) + b
        r = rows.setdefault(kind, [0, 0, 0])
        r[0] += int(y[ev].sum()); r[1] += int((~y[ev]).sum()); r[2] += 1  # noqa: E702
        drain = np.zeros(len(y), dtype=bool)
        k = info["end"]
        while k < len(y) and a[k]:
            drain[k] = True
            k += 1
        for name, mask in (("detected", a & y), ("drain", drain)):
            for who in loop["carrier"][mask]:
                carried[name][who] = carried[name].get(who, 0) + 1
        blamed[kind] = blamed.get(kind, np.zeros(x.shape[1], dtype=int)) + np.bincount(
            loop["channel"][a & y], minlength=x.shape[1])
        ys.append(y[ev])
        alerts.append(a[ev])
    m = point_metrics(np.concatenate(ys), np.concatenate(alerts))
    source = "score_loop" if args.loop or args.probe != "none" else "score_recording"
    print(f"{args.runs} runs, alarms from {source}, probe {args.probe}, overrides {args.set or 'none'}, clear half-life {args.clear_halflife or 'off'}")
    print(f"model F1 {m.f1:.4f}  false-alarm {m.false_alarm_rate:.4f}  missed-alarm {m.missed_alarm_rate:.4f}"
          + (f"  (score_loop vs score_recording: {differ} rows differ)" if args.probe == "none" else ""))
    print("| kind | runs | anomalous rows | missed: never detected (runs) | onset delay | cleared inside | "
          "normal rows | false: before first | drain after end | other |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = AlarmBreakdown()
    for kind in KINDS:
        if kind not in per_kind:
            continue
        b, (anom, norm, n) = per_kind[kind], rows[kind]
        total = total + b
        print(f"| {kind} | {n} | {anom} | {b.missed_undetected} ({b.events_undetected}) | {b.missed_onset} | "
              f"{b.missed_gap} | {norm} | {b.false_before} | {b.false_drain} | {b.false_other} |")
    anom, norm = sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())
    print(f"| all | {args.runs} | {anom} | {total.missed_undetected} ({total.events_undetected}) | {total.missed_onset} | "
          f"{total.missed_gap} | {norm} | {total.false_before} | {total.false_drain} | {total.false_other} |")
    for name, counts in carried.items():
        print(f"statistic carrying the score on the {name} rows: {dict(sorted(counts.items()))}")
    print("channel blamed on the detected rows (acc1, acc2, current, pressure, temperature, thermocouple, voltage, flow):")
    for kind in KINDS:
        if kind in blamed:
            print(f"  {kind}: {blamed[kind].tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

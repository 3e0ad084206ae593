"""Offline scoring of a whole recording and point-wise metrics (numpy + onnxruntime, no torch).

``score_recording`` applies exactly the daemon's scoring to a recorded series: per-device
value calibration on the first ``calibration_rows`` rows (``SeriesCalibration``), sliding
windows of T rows (stride 1, the window ending at row t scores row t), the ONNX model,
``WindowScorer`` calibrated on the windows cut from the calibration rows, and the
raise/clear hysteresis. From the window ending at the last calibration row on (the daemon
scores that one too), each window is standardised with the level its own reading's step
left (``level_follow``, models.scoring.level) and scored against the state every earlier
window left (the level hold, the profile's adaptation), as the daemon's per-reading path
does; models.scoring.stream does that with batched model calls, and the scores equal the
daemon's on a recording without gaps (tests/test_offline_equals_daemon.py; readings are
rounded to float32 as in the daemon's window store). The PCA baseline (``PCABaseline``) is
calibrated on the same windows, with its own fixed thresholds (99.5 % quantile x 1.5) and
frozen levels: the reference.
Rows before the end of calibration get score NaN and no alert; metrics
count only the rows after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.pca_baseline import PCABaseline
from models.scoring.calibration import SeriesCalibration, fill_forward
from models.scoring.decision import Hysteresis, debounced_flags
from models.scoring.level import LevelTracker
from models.scoring.scorer import DeviceScoreState, WindowScorer
from models.scoring.stream import score_stream


def alert_flags(scores: np.ndarray, settings: Mapping[str, float]) -> np.ndarray:
    """Per-row alert state ``[L]`` under the model's raise/clear settings: the daemon's
    anomaly lifecycle (``models.scoring.decision``) without its delivery rate limits,
    which shape delivery, not detection."""
    rule = Hysteresis(raise_at=settings["raise"], clear_at=settings["clear"],
                      raise_after=int(settings["raise_after"]), clear_after=int(settings["clear_after"]))
    return debounced_flags(np.asarray(scores, dtype=np.float64), rule)


@dataclass
class RecordingScores:
    """Per-row results ``[L]``: model ``score``/``alert``, ``pca_score``/``pca_alert``,
    ``channel_scores [L, C]``; ``evaluated`` marks rows after calibration."""

    score: np.ndarray
    alert: np.ndarray
    channel_scores: np.ndarray
    pca_score: np.ndarray
    pca_alert: np.ndarray
    evaluated: np.ndarray
    calibration_rows: int


def fill_missing(values: np.ndarray) -> np.ndarray:
    """Forward-fill NaN per channel (``models.scoring.calibration.fill_forward``)."""
    return fill_forward(values)


def sliding_windows(z: np.ndarray, window_length: int) -> np.ndarray:
    """``[L, C]`` -> ``[L - T + 1, T, C]`` (contiguous float32 copy)."""
    v = np.lib.stride_tricks.sliding_window_view(z, window_length, axis=0)  # [L-T+1, C, T]
    return np.ascontiguousarray(v.transpose(0, 2, 1), dtype=np.float32)


def run_model(session: Any, windows: np.ndarray, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Run an ONNX Runtime session over ``windows [M, T, C]`` in batches."""
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    input_name = session.get_inputs()[0].name
    for i in range(0, len(windows), batch_size):
        for name, out in zip(names, session.run(names, {input_name: windows[i : i + batch_size]})):
            parts[name].append(out)
    return {n: np.concatenate(p) for n, p in parts.items()}


def score_recording(
    values: np.ndarray,
    session: Any,
    window_length: int,
    calibration_rows: int,
    settings: Mapping[str, float],
    with_pca: bool = True,
) -> RecordingScores:
    """Score every row of ``values [L, C]`` (physical units, NaN = missing) as the daemon would."""
    # the daemon's window store keeps float32 readings: score those, so that every window
    # sees what the daemon's would (models.scoring.stream)
    raw = fill_missing(values).astype(np.float32)
    n_rows, n_ch = raw.shape
    t = window_length
    if calibration_rows < t + 8 or calibration_rows >= n_rows:
        raise ValueError(
            f"calibration rows must be in [{t + 8}, {n_rows - 1}] (T = {t}, {n_rows} rows), got {calibration_rows}"
        )
    cal = SeriesCalibration(n_ch, calibration_rows)
    if not cal.update(np.asarray(values[:calibration_rows], dtype=np.float32)):
        cal.freeze()  # the calibration rows had gaps: use their finite readings
    scorer = WindowScorer(None, **dict(settings))
    # the daemon's path: calibration windows from the retained calibration readings
    cal_windows = cal.calibration_windows(t)
    cal.release()
    state = DeviceScoreState(n_ch)
    scorer.calibrate_windows(state, cal_windows, run_model(session, cal_windows))
    rate = settings["level_follow"]
    tracker = LevelTracker(n_ch, calibration_rows, rate) if rate > 0 else None
    # every window from the one ending at the last calibration row (the daemon scores it
    # too: the reading that froze the calibration makes it due), one at a time as far as
    # the state goes, the model batched (models.scoring.stream)
    first = calibration_rows - 1
    seq, seq_channels = score_stream(raw, first, cal.mean, cal.std, scorer, state, tracker,
                                     lambda w: run_model(session, w), t)
    score = np.full(n_rows, np.nan, dtype=np.float32)
    channel_scores = np.full((n_rows, n_ch), np.nan, dtype=np.float32)
    score[calibration_rows:], channel_scores[calibration_rows:] = seq[1:], seq_channels[1:]
    decided = np.full(n_rows, np.nan, dtype=np.float32)
    decided[first:] = seq  # that first score counts towards a raise, as in the daemon
    alert = alert_flags(decided, settings)
    alert[:calibration_rows] = False
    pca_score = np.full(n_rows, np.nan, dtype=np.float32)
    if with_pca:
        pca = PCABaseline()  # the fixed reference: its own 99.5 % x 1.5 thresholds, frozen levels
        pca.fit(cal_windows)
        windows = sliding_windows(cal.standardize(raw), t)  # window i ends at row i + t - 1
        pca_score[calibration_rows:] = pca.score(windows[calibration_rows - t + 1 :])  # ending after calibration
    evaluated = np.zeros(n_rows, dtype=bool)
    evaluated[calibration_rows:] = True
    return RecordingScores(
        score=score,
        alert=alert,
        channel_scores=channel_scores,
        pca_score=pca_score,
        pca_alert=alert_flags(pca_score, settings) if with_pca else np.zeros(n_rows, dtype=bool),
        evaluated=evaluated,
        calibration_rows=calibration_rows,
    )


@dataclass(frozen=True)
class PointMetrics:
    """Point-wise detection metrics (every row counts once; no point adjustment)."""

    precision: float
    recall: float
    f1: float
    false_alarm_rate: float
    missed_alarm_rate: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    events: int
    events_detected: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def point_metrics(labels: np.ndarray, alerts: np.ndarray, evaluated: np.ndarray | None = None) -> PointMetrics:
    """Point-wise precision/recall/F1, false-alarm rate (FP / normal rows) and missed-alarm
    rate (FN / anomalous rows) over the ``evaluated`` rows. ``events_detected`` counts
    labelled runs with at least one alert (reported beside, never instead of, point F1)."""
    y = np.asarray(labels, dtype=bool)
    a = np.asarray(alerts, dtype=bool)
    m = np.ones_like(y) if evaluated is None else np.asarray(evaluated, dtype=bool)
    y, a = y[m], a[m]
    tp = int(np.sum(y & a))
    fp = int(np.sum(~y & a))
    fn = int(np.sum(y & ~a))
    tn = int(np.sum(~y & ~a))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    runs = _runs(y)
    detected = sum(1 for s, e in runs if a[s:e].any())
    return PointMetrics(
        precision=round(precision, 4),
        recall=round(recall, 4),
        f1=round(f1, 4),
        false_alarm_rate=round(fp / (fp + tn), 4) if fp + tn else 0.0,
        missed_alarm_rate=round(fn / (tp + fn), 4) if tp + fn else 0.0,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        true_negatives=tn,
        events=len(runs),
        events_detected=detected,
    )


@dataclass(frozen=True)
class AlarmBreakdown:
    """Where the missed and the false alarms of one series (or several, summed) are.

    Missed anomalous rows: ``missed_undetected`` in labelled runs never alarmed,
    ``missed_onset`` before the first alarm inside an alarmed run (detection delay),
    ``missed_gap`` after it (an alarm that cleared while the labelled run went on).
    False alarms (alarmed normal rows): ``false_before`` before the first labelled run,
    ``false_drain`` continuing without a break from the end of a labelled run (the
    alarm outlasting the fault: its readings still in the window, then the clear
    hysteresis), ``false_other`` the rest (alarms raised on normal data)."""

    missed_undetected: int = 0
    missed_onset: int = 0
    missed_gap: int = 0
    false_before: int = 0
    false_drain: int = 0
    false_other: int = 0
    events: int = 0
    events_undetected: int = 0

    def __add__(self, other: AlarmBreakdown) -> AlarmBreakdown:
        return AlarmBreakdown(**{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__})

    def as_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in self.__dataclass_fields__}


def alarm_breakdown(labels: np.ndarray, alerts: np.ndarray, evaluated: np.ndarray | None = None) -> AlarmBreakdown:
    """Split the missed and false alarms of one series by cause (``AlarmBreakdown``), over
    its ``evaluated`` rows (the rows after calibration, in time order)."""
    y = np.asarray(labels, dtype=bool)
    a = np.asarray(alerts, dtype=bool)
    if evaluated is not None:
        m = np.asarray(evaluated, dtype=bool)
        y, a = y[m], a[m]
    undetected = onset = gap = drain = 0
    runs = _runs(y)
    for s, e in runs:
        hit = np.flatnonzero(a[s:e])
        if hit.size == 0:
            undetected += e - s
            continue
        onset += int(hit[0])
        gap += int(np.sum(~a[s + int(hit[0]) : e]))
        k = e
        while k < y.size and a[k] and not y[k]:
            k += 1
        drain += k - e
    false = int(np.sum(a & ~y))
    before = int(np.sum(a[: runs[0][0]])) if runs else false
    return AlarmBreakdown(
        missed_undetected=undetected, missed_onset=onset, missed_gap=gap, false_before=before,
        false_drain=drain, false_other=false - before - drain, events=len(runs),
        events_undetected=sum(1 for s, e in runs if not a[s:e].any()),
    )

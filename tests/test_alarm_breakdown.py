"""``models.evaluate.alarm_breakdown``: where missed and false alarms are (issue 11, fifth pass)."""

from __future__ import annotations

import numpy as np

from models.evaluate import AlarmBreakdown, alarm_breakdown, point_metrics


def _mask(n: int, *spans: tuple[int, int]) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    for s, e in spans:
        out[s:e] = True
    return out


def test_each_missed_and_false_row_has_one_cause() -> None:
    y = _mask(100, (20, 40), (60, 70), (85, 95))
    a = _mask(100, (5, 7), (25, 30), (33, 44), (50, 52), (62, 74))
    b = alarm_breakdown(y, a)
    assert b == AlarmBreakdown(
        missed_undetected=10,  # 85-95 never alarmed
        missed_onset=5 + 2,  # 20-25, 60-62
        missed_gap=3,  # 30-33 cleared inside the run
        false_before=2,  # 5-7
        false_drain=4 + 4,  # 40-44, 70-74
        false_other=2,  # 50-52
        events=3,
        events_undetected=1,
    )
    m = point_metrics(y, a)
    assert b.missed_undetected + b.missed_onset + b.missed_gap == m.false_negatives
    assert b.false_before + b.false_drain + b.false_other == m.false_positives


def test_evaluated_rows_and_sums() -> None:
    rng = np.random.default_rng(7)
    y = rng.random(500) < 0.3
    a = rng.random(500) < 0.4
    ev = np.arange(500) >= 100
    b = alarm_breakdown(y, a, ev)
    m = point_metrics(y, a, ev)
    assert b.missed_undetected + b.missed_onset + b.missed_gap == m.false_negatives
    assert b.false_before + b.false_drain + b.false_other == m.false_positives
    assert (b + b).as_dict() == {k: 2 * v for k, v in b.as_dict().items()}
    none = alarm_breakdown(np.zeros(10, bool), _mask(10, (2, 4)))
    assert none.false_before == 2 and none.events == 0

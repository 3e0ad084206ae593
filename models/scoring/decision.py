"""From a score series to raise/clear decisions: the anomaly lifecycle without delivery.

The daemon's alert policy (``gateway.alerts.policy``) and ``model score`` / ``model eval``
decide alike: a window scoring ``>= raise_at`` is bad, one scoring ``< clear_at`` is good;
``raise_after`` consecutive bad windows raise, ``clear_after`` consecutive good windows
clear; an unscored window (NaN) changes nothing. The policy adds delivery concerns on top
(rate limits, severities, idempotency keys); ``tests/test_decision.py`` holds the two to
the same flags with rate limits off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hysteresis:
    """Thresholds and debounce counts of the anomaly lifecycle (the manifest's defaults)."""

    raise_at: float
    clear_at: float
    raise_after: int
    clear_after: int


def debounced_flags(scores: Iterable[float], rule: Hysteresis) -> np.ndarray:
    """Whether an anomaly is raised after each score of one series (bool ``[L]``)."""
    raised = False
    run = 0
    out: list[bool] = []
    for score in scores:
        s = float(score)
        if not math.isnan(s):
            pushing = s < rule.clear_at if raised else s >= rule.raise_at
            if pushing:
                run += 1
                if run >= (rule.clear_after if raised else rule.raise_after):
                    raised = not raised
                    run = 0
            else:
                run = 0
        out.append(raised)
    return np.array(out, dtype=bool)

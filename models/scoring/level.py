"""Each channel's standardisation level follows the device, at a bounded rate (numpy only).

A device's readings are standardised with the mean/std its calibration stretch froze
(models.scoring.calibration), so a sustained fault stays visible as a level. Frozen for
ever, though, the same rule turns every slow legitimate change into an alarm that never
ends: a pump that warms by a few calibration stds over an hour, a season, a new operating
point after maintenance. On a plant benchmark 78 % of the normal rows after a run's last
fault stayed alarmed (issue 11).

``LevelTracker`` lets the level follow, with one hard bound: per reading it moves at most
``rate`` calibration stds per calibration length (``level_follow``, 1.0 by default: one
std per ``calibration_steps`` readings), towards a short moving average of the readings
(time constant one window). It is not gated by the score: a process that keeps drifting
during an alarm is still followed, so the alarm can end once the fault does. The bound is
what keeps faults visible: a shift of ``k`` stds needs at least ``k`` calibration lengths
to be absorbed (a 5-std shift over a week-long calibration: 5 weeks), far longer than the
faults the product exists to catch; a fault that drifts more slowly than the bound is
treated as legitimate change (docs/model-contract.md).

Tried and not kept: following a level that has jumped far (more than 3 or 6 stds) from
the followed one proportionally slower, as an excursion rather than drift. It changed
nothing on the plant look-alike (F1 0.775 both) and in the demo healthy nodes alarmed more
often (weather fronts outrun the bound, and a slowed follower then falls further behind).

Numbers are in standardised units (z = (x - mean) / std with the frozen calibration). The
daemon feeds each new reading and standardises the next windows with ``mean + offset *
std`` (gateway.pipeline.inference); ``model score``/``eval`` do the same row by row
(models.evaluate).
"""

from __future__ import annotations

import numpy as np


class LevelTracker:
    """Bounded-rate follower of a device's channel levels (see the module docstring).

    ``start [C]``: the level at the end of calibration (z units; the mean of its last
    window). ``calibration_steps``: readings in the calibration, which sets the step bound
    ``rate / calibration_steps`` per reading; ``window``: time constant of the moving
    average, in readings. ``offset [C]``: the current level shift in z units (starts at 0:
    windows are first standardised exactly as the calibration's were).
    """

    __slots__ = ("level", "offset", "step", "beta")

    def __init__(self, start: np.ndarray, calibration_steps: int, window: int, rate: float = 1.0) -> None:
        if calibration_steps < 1 or window < 1 or rate < 0:
            raise ValueError("need calibration_steps >= 1, window >= 1 and rate >= 0")
        self.level = np.nan_to_num(np.asarray(start, dtype=np.float64).copy())
        self.offset = np.zeros_like(self.level)
        self.step = rate / calibration_steps
        self.beta = 1.0 / window

    def update(self, z: np.ndarray) -> np.ndarray:
        """Feed readings ``[K, C]`` (or one ``[C]``) in z units, oldest first; non-finite
        values leave their channel as it is. Returns the offset after each reading
        ``[K, C]`` (float64)."""
        rows = np.asarray(z, dtype=np.float64).reshape(-1, self.level.size)
        out = np.empty_like(rows)
        level, offset, beta, step = self.level, self.offset, self.beta, self.step
        for i, row in enumerate(rows):
            ok = np.isfinite(row)
            if ok.all():  # the usual case, without the masking
                level = level + beta * (row - level)
            else:
                level = np.where(ok, level + beta * (np.where(ok, row, 0.0) - level), level)
            offset = offset + np.minimum(np.maximum(level - offset, -step), step)
            out[i] = offset
        self.level, self.offset = level, offset
        return out


def follow_offsets(z: np.ndarray, calibration_rows: int, window: int, rate: float) -> np.ndarray:
    """Offsets ``[L, C]`` for a whole recording in z units: 0 over the calibration rows,
    then a ``LevelTracker`` fed row by row (what ``model score``/``eval`` apply)."""
    out = np.zeros(z.shape, dtype=np.float64)
    if rate <= 0 or calibration_rows >= z.shape[0]:
        return out
    start = np.nanmean(z[max(0, calibration_rows - window) : calibration_rows], axis=0)
    tracker = LevelTracker(start, calibration_rows, window, rate)
    out[calibration_rows:] = tracker.update(z[calibration_rows:])
    return out

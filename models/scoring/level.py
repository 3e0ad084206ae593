"""Each channel's standardisation level follows the device, at a bounded rate (numpy only).

A device's readings are standardised with the mean/std its calibration stretch froze
(models.scoring.calibration), so a sustained fault stays visible as a level. Frozen for
ever, though, the same rule turns every slow legitimate change into an alarm that never
ends: a pump that warms by a few calibration stds over an hour, a season, a new operating
point after maintenance. On a plant benchmark 78 % of the normal rows after a run's last
fault stayed alarmed (issue 11).

``LevelTracker`` lets the level follow, with one hard bound: per reading it moves at most
``rate`` calibration stds per calibration length (``level_follow``, 1.0 by default: one
std per ``calibration_steps`` readings), towards the median of the newest window (a fault
moves that median only once it fills half the window, and it is back half a window
after the fault ends; an exponential average instead kept pulling for ~140 readings after
a 15-std fault and the demo's faulty node re-alarmed on the offset it left). It is gated
per channel, not for the device: while a window scores at or over ``level_hold`` (1.0),
the channels carrying that score are held (``hold_from``), so a fault does not teach its
own channels the new level and leaves no offset behind when it ends (plant look-alike:
false alarms 0.070 -> 0.060, normal rows alarmed after the last anomaly 0.107 -> 0.091);
the other channels of a device that keeps drifting during an alarm are still followed, so
the alarm can end once the fault does. A held channel is released by the next window
below the threshold, so a sustained fault is still slowed rather than frozen out of the
level (tests/test_alarm_trust.py: 0.25-0.65x the move without the hold), and a new
operating point is still reached, later. The bound is
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

HOLD_SHARE = 0.5
"""With ``level_hold``, a window at the threshold holds the channels scoring at least this
share of its largest channel score (the distance ratio is split among channels)."""


class LevelTracker:
    """Bounded-rate follower of a device's channel levels (see the module docstring).

    ``calibration_steps``: readings in the calibration, which sets the step bound
    ``rate / calibration_steps`` per reading. ``offset [C]``: the current level shift in z
    units (starts at 0: windows are first standardised exactly as the calibration's were).
    The caller feeds, per reading, the level to follow: the median of the newest window
    in z units (``window_level``), robust to a fault until it fills half the window and
    back as soon as it has left half of it.
    """

    __slots__ = ("hold", "offset", "step")

    def __init__(self, n_channels: int, calibration_steps: int, rate: float = 1.0) -> None:
        if n_channels < 1 or calibration_steps < 1 or rate < 0:
            raise ValueError("need n_channels >= 1, calibration_steps >= 1 and rate >= 0")
        self.offset = np.zeros(n_channels)
        self.step = rate / calibration_steps
        self.hold = np.zeros(n_channels, dtype=bool)

    def hold_from(self, score: float, channel_scores: np.ndarray, hold_at: float) -> None:
        """Hold (stop following) the channels that carry an excursion: when the device's
        newest scored window scores at or over ``hold_at`` (``level_hold``; 0 = never hold),
        each channel whose score (``ScoreResult.channel_scores [C]``) is at least
        ``HOLD_SHARE`` of the largest; every channel is released once a window scores below
        it (a NaN score leaves the hold as it is)."""
        if hold_at <= 0 or not score == score:  # off, or NaN
            return
        if score < hold_at:  # the usual case: a normal window, nothing to compute
            if self.hold.any():
                self.hold = np.zeros_like(self.hold)
            return
        scores = np.nan_to_num(np.asarray(channel_scores, dtype=np.float64), nan=0.0)
        self.hold = scores >= HOLD_SHARE * scores.max()

    def update(self, levels: np.ndarray) -> np.ndarray:
        """Feed the level of each new reading ``[K, C]`` (or one ``[C]``), oldest first, in z
        units; a non-finite level leaves its channel as it is. Returns the offset after
        each ``[K, C]`` (float64)."""
        rows = np.asarray(levels, dtype=np.float64).reshape(-1, self.offset.size)
        out = np.empty_like(rows)
        offset = self.offset
        step = np.where(self.hold, 0.0, self.step) if self.hold.any() else self.step
        for i, row in enumerate(rows):
            move = np.minimum(np.maximum(row - offset, -step), step)
            offset = offset + (move if np.isfinite(row).all() else np.where(np.isfinite(row), move, 0.0))
            out[i] = offset
        self.offset = offset
        return out


def window_level(z_window: np.ndarray) -> np.ndarray:
    """The level a window shows, ``[T, C]`` (or ``[N, T, C]``) in z units -> ``[C]`` (``[N, C]``):
    its median over time (NaN where a channel has a missing value)."""
    return np.median(np.asarray(z_window, dtype=np.float64), axis=-2)


def follow_offsets(z: np.ndarray, calibration_rows: int, window: int, rate: float) -> np.ndarray:
    """Offsets ``[L, C]`` for a whole recording in z units: 0 over the calibration rows,
    then a ``LevelTracker`` fed row by row with the level of the window ending at that row
    (what ``model score``/``eval`` apply)."""
    out = np.zeros(z.shape, dtype=np.float64)
    if rate <= 0 or calibration_rows >= z.shape[0]:
        return out
    w = min(window, calibration_rows)
    views = np.lib.stride_tricks.sliding_window_view(z[calibration_rows - w + 1 :], w, axis=0)
    levels = np.median(views, axis=-1)  # [L - calibration_rows, C]: the window ending at each later row
    tracker = LevelTracker(z.shape[1], calibration_rows, rate)
    out[calibration_rows:] = tracker.update(levels)
    return out

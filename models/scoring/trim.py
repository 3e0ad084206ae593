"""Which score-calibration windows to fit on: drop a minority of anomalous ones (numpy only).

A device's calibration stretch is assumed normal, but nobody guarantees that the first
week of a real site is fault-free: one level shift or spike burst in it puts the 99.5 %
quantiles (models.scoring.scorer) far above normal and the device then misses most later faults.
``trim_mask`` flags, without labels, the calibration windows whose statistics are far out
on the high side of the stretch's own robust spread, so ``WindowScorer.calibrate`` can refit
its profile and take its quantiles on the rest.

The rule: each statistic (residual per channel, embedding distance) is taken on a log
scale (they are positive and skewed) and turned into a robust z-value, ``(log s -
median) / (1.4826 * MAD)`` with the scale floored at ``MIN_LOG_SCALE`` (a near-constant
statistic does not make tiny differences look extreme). A window's outlyingness is its
largest z over the statistics; a window is dropped when that exceeds ``z_bound``, at most
``max_fraction`` of the windows (the most outlying first), so a stretch that is mostly
unusual is kept as it is rather than cut down to a sliver. Only the high side counts: a
quiet window never makes a threshold too large.

Measured and not done (docs/models.md): also dropping a dropped window's time neighbours
while their z stays above 3-5 (the onset and end of a fault are only partly inside a
window). It brought the thresholds back to the clean stretch's under every generated
level shift, but on normal machine devices it also dropped the shoulders of a large motor
start and their alert fraction rose from 0.005 to 0.08.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.scoring.profile import fit_profile, profile_distance

TRIM_PASSES = 4
"""At most this many fits when calibration windows are trimmed (``calibration_keep``)."""
MIN_LOG_SCALE = 0.1
"""Floor of the robust log-scale spread (1.4826 * MAD): with z_bound 4, a statistic must be
at least e^0.4 = 1.5x its median before a window can be dropped."""

_EPS = 1e-12


def robust_log_z(stats: np.ndarray) -> np.ndarray:
    """``stats [M, S]`` (positive; NaN allowed) -> robust z of ``log`` per column ``[M, S]``
    (NaN stays NaN)."""
    logs = np.log(np.maximum(np.asarray(stats, dtype=np.float64), _EPS))
    med = np.nanmedian(logs, axis=0)
    scale = np.maximum(1.4826 * np.nanmedian(np.abs(logs - med), axis=0), MIN_LOG_SCALE)
    return (logs - med) / scale


def diagonal_distance(flat: np.ndarray) -> np.ndarray:
    """``flat [M, F]`` -> mean squared robust z per window ``[M]`` (coordinate-wise median and
    MAD): a first outlyingness of the embeddings that the outliers themselves cannot hide by
    widening a fitted covariance."""
    x = np.asarray(flat, dtype=np.float64)
    med = np.median(x, axis=0)
    scale = np.maximum(1.4826 * np.median(np.abs(x - med), axis=0), 1e-6)
    return np.asarray(np.mean(np.square((x - med) / scale), axis=1))


def trim_mask(stats: np.ndarray, max_fraction: float, z_bound: float) -> np.ndarray:
    """Windows to keep ``[M]`` (bool) given their statistics ``stats [M, S]``: False for a
    window whose largest robust log-z exceeds ``z_bound``, at most ``floor(max_fraction * M)``
    of them (the most outlying). ``max_fraction <= 0`` keeps everything."""
    stats = np.asarray(stats, dtype=np.float64)
    m = stats.shape[0]
    keep = np.ones(m, dtype=bool)
    cap = int(max_fraction * m) if max_fraction > 0 else 0
    if cap <= 0 or m == 0:
        return keep
    z = np.nan_to_num(robust_log_z(stats.reshape(m, -1)), nan=0.0).max(axis=1)
    over = np.flatnonzero(z > z_bound)
    if over.size > cap:
        over = over[np.argsort(z[over])[::-1][:cap]]
    keep[over] = False
    return keep


def calibration_keep(flat: np.ndarray, res: np.ndarray, settings: Mapping[str, float]) -> np.ndarray:
    """Calibration windows to fit on ``[M]`` (bool), from the embeddings ``flat [M, F]``
    and residuals ``res [M, C]`` (``trim_mask``; all True when ``calibration_trim``
    is 0). First pass: the residuals, the coordinate-wise robust distance and the
    distance to a profile fitted on every window; then, while the kept set changes (at
    most ``TRIM_PASSES`` fits), the residuals and the distance to a profile refitted on
    the windows kept so far (an outlying stretch can widen the first fit's covariance
    enough to hide in it). At most ``calibration_trim`` of the windows are dropped."""
    frac, bound = settings["calibration_trim"], settings["calibration_trim_z"]
    keep = np.ones(flat.shape[0], dtype=bool)
    cap = int(frac * flat.shape[0]) if frac > 0.0 else 0
    if cap < 1 or flat.shape[0] - cap < 8:
        return keep
    first = profile_distance(flat, *fit_profile(flat, settings))
    keep = trim_mask(np.column_stack([res, diagonal_distance(flat), first]), frac, bound)
    if keep.all():
        return keep
    for _ in range(TRIM_PASSES - 1):
        refit = profile_distance(flat, *fit_profile(flat[keep], settings))
        again = trim_mask(np.column_stack([res, refit]), frac, bound)
        if np.array_equal(again, keep):
            break
        keep = again
    return keep

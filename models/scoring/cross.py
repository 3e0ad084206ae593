"""A model-free cross-channel statistic (numpy only; issue 11, ``cross_channel`` setting).

The model scores each channel on its own (its embedding is per channel; the joint distance
sees the channels' embeddings together, but only as the model summarises them). This
statistic looks at the readings themselves: the window's newest standardised reading of
every channel (after the level offsets, models.scoring.level), ``v [C]``, against the
mean and shrunk covariance of the calibration windows' newest readings (fitted as the
embedding profile is, models.scoring.profile). Per channel it takes the *conditional*
standardised residual, how far channel ``j`` is from what the other channels predict for
it: ``e_j = (P (v - mu))_j / sqrt(P_jj)`` with ``P`` the precision, and the statistic is
``max_j e_j ** 2``. A channel that leaves its usual relation to the others (current up
while voltage falls) stands out even where each channel alone is inside its range.

Its threshold is set like the others' (``WindowScorer._target_thresholds``): held-out
values (each calibration window against a fit on the other folds), scaled by their own
tail quantile, then joined in the maximum whose tail quantile sets every threshold.
Only devices with at least 2 channels get it; ``pack``/``terms`` keep the fit in one
float32 array (``DeviceScoreState.cross``: ``[mu (C) | precision (C*C)]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from models.scoring.profile import fit_profile, profile_shrinkage
from models.scoring.tail import fold_slices


def cross_features(inputs: np.ndarray) -> np.ndarray:
    """The newest reading of each channel of ``inputs [N, T, C]`` (standardised) ``[N, C]``."""
    return np.asarray(np.asarray(inputs)[:, -1, :], dtype=np.float64)


def _fit(feats: np.ndarray, settings: Mapping[str, float], lam: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    mu, basis, inv_eig, inv_rest = fit_profile(feats, settings, lam)
    precision = (basis * (inv_eig - inv_rest)) @ basis.T + inv_rest * np.eye(feats.shape[1])
    return mu, precision


def _terms(feats: np.ndarray, mu: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``e_j ** 2`` per row and channel ``[N, C]`` (``mu [C]``/``[N, C]``, ``precision [C, C]``/``[N, C, C]``)."""
    diff = feats - mu
    if precision.ndim == 2:
        e = diff @ precision
        diag = np.diag(precision)
    else:
        e = np.einsum("nc,ncd->nd", diff, precision)
        diag = np.einsum("ncc->nc", precision)
    return np.asarray(e * e / np.maximum(diag, 1e-12))


def fit_cross(feats: np.ndarray, settings: Mapping[str, float], gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit on calibration features ``[M, C]`` (time order): the packed fit ``[C + C*C]``
    (float32) and each window's held-out statistic ``[M]`` (against a fit on the other
    ``calibration_folds`` folds, ``gap`` windows either side left out; in-sample with
    fewer than 2 folds)."""
    f = np.asarray(feats, dtype=np.float64)
    m, c = f.shape
    mu, precision = _fit(f, settings)
    held = _terms(f, mu, precision).max(axis=1)
    folds = int(settings["calibration_folds"])
    if folds >= 2:
        lam = profile_shrinkage(f, settings) if settings["fold_shrinkage"] > 0 else None
        for train, block in fold_slices(m, folds, gap):
            if train.size >= 8:
                held[block] = _terms(f[block], *_fit(f[train], settings, lam)).max(axis=1)
    return np.concatenate([mu, precision.ravel()]).astype(np.float32), held


def cross_terms(feats: np.ndarray, packed: Sequence[np.ndarray]) -> np.ndarray:
    """``e_j ** 2`` ``[N, C]`` of features ``[N, C]``, row ``i`` against ``packed[i]`` (``fit_cross``)."""
    n, c = feats.shape
    fits = np.stack([np.asarray(p, dtype=np.float64) for p in packed])
    return _terms(np.asarray(feats, dtype=np.float64), fits[:, :c], fits[:, c:].reshape(n, c, c))

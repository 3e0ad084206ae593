"""Thresholds that state their false-alarm rate (numpy only).

A device's alert threshold must hold on data its calibration did *not* fit: the in-sample
99.5 % quantile of a few hundred overlapping calibration windows, measured against a
covariance fitted on those same windows, is far too tight for the next day of the same
normal (21.7 % of normal rows alarmed before the first fault, issue 11). This module has
the pieces ``WindowScorer.calibrate`` builds its thresholds from:

- ``fold_slices``: contiguous cross-fitting folds over time-ordered calibration windows,
  with the windows that share readings with a held-out block dropped from its training
  part, so each held-out distance is measured against a profile that never saw it;
- ``oas_shrinkage`` and ``effective_samples``: the Oracle Approximating Shrinkage
  intensity of a covariance (Chen, Wiesel, Eldar and Hero 2010), computed for the number
  of *effectively independent* windows (overlapping windows are strongly autocorrelated:
  a few hundred of them carry the information of a dozen), so few calibration rows against
  many embedding dimensions are shrunk hard towards the identity;
- ``tail_quantile``: the value a fresh normal window exceeds with probability ``alpha``
  (the declared ``false_alarm_target``): the empirical (split-conformal) quantile where the
  sample reaches that far, else a generalised Pareto tail fitted to the largest 10 % of the
  held-out values (peaks over threshold). The fit is made on log values (``log_scale``): a
  positive, skewed statistic is then extrapolated as a Pareto-type tail, the conservative
  choice when a few hundred windows must speak for ten thousand.
"""

from __future__ import annotations

import math

import numpy as np

TAIL_FRACTION = 0.1
"""Fraction of the held-out values (the largest) the generalised Pareto tail is fitted to."""
MIN_TAIL = 10
"""At least this many values in the fitted tail."""


def _gpd_quantile(x: np.ndarray, alpha: float, xi_max: float = 0.5) -> float:
    """Upper ``alpha`` quantile of the finite sample ``x``: empirical where
    ``(n + 1)(1 - alpha)`` is within the sample, else peaks over threshold with a
    generalised Pareto tail (method of moments; shape clipped to [0, ``xi_max``], so the
    tail is never taken as bounded and never as heavier than a variance allows). One row
    of ``_gpd_quantiles``."""
    return float(_gpd_quantiles(np.asarray(x, dtype=np.float64)[None, :], alpha, xi_max)[0])


def tail_quantile(values: np.ndarray, alpha: float, log_scale: bool = True, floor: float = 1e-12,
                  xi_max: float = 0.5) -> float:
    """The value a new draw of ``values``' distribution exceeds with probability ``alpha``
    (``0 < alpha < 1``). Non-finite values are ignored; NaN when none is left. With
    ``log_scale`` (for positive statistics) the tail is fitted to ``log(max(v, floor))``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    if log_scale:
        return float(math.exp(_gpd_quantile(np.log(np.maximum(v, floor)), alpha, xi_max)))
    return _gpd_quantile(v, alpha, xi_max)


def effective_samples(rows: np.ndarray) -> float:
    """Effectively independent rows in time-ordered ``rows [M, F]``: ``M (1 - r) / (1 + r)``
    with ``r`` the mean lag-1 autocorrelation over the coordinates, clipped to [0, 0.99]
    (the AR(1) rule); at least 2."""
    m = rows.shape[0]
    if m < 3:
        return float(max(m, 2))
    c = rows - rows.mean(axis=0)
    var = np.einsum("mf,mf->f", c, c)
    ok = var > 1e-12
    if not ok.any():
        return float(m)
    r = float(np.mean(np.einsum("mf,mf->f", c[1:, ok], c[:-1, ok]) / var[ok]))
    r = min(max(r, 0.0), 0.99)
    return max(2.0, m * (1.0 - r) / (1.0 + r))


def oas_shrinkage(cov: np.ndarray, n_samples: float) -> float:
    """OAS intensity in [0, 1] for shrinking the sample covariance ``cov [F, F]`` of
    ``n_samples`` (effective) samples towards ``trace(cov) / F * I`` (the formula
    scikit-learn's ``OAS`` uses)."""
    p = cov.shape[0]
    mu = float(np.trace(cov)) / p
    alpha = float(np.mean(cov * cov))
    num = alpha + mu * mu
    den = (n_samples + 1.0) * (alpha - mu * mu / p)
    return 1.0 if den <= 0.0 else float(min(1.0, num / den))


def fold_slices(m: int, folds: int, gap: int) -> list[tuple[np.ndarray, slice]]:
    """``folds`` contiguous held-out blocks over ``m`` time-ordered windows, each with the
    indices of its training windows: all others except the ``gap`` windows on either side
    of the block (they share readings with it)."""
    out: list[tuple[np.ndarray, slice]] = []
    edges = np.linspace(0, m, folds + 1).round().astype(int)
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        train = np.r_[0 : max(0, a - gap), min(m, b + gap) : m]
        out.append((train, slice(a, b)))
    return out


def _gpd_quantiles(xs: np.ndarray, alpha: float, xi_max: float = 0.5) -> np.ndarray:
    """The upper ``alpha`` quantile of each row of ``xs [B, n]`` (rows in any order; see
    ``_gpd_quantile``); only each row's largest ``k + 1`` values are sorted."""
    b, n = xs.shape
    rank = math.ceil((n + 1) * (1.0 - alpha))
    k = min(n - 1, max(MIN_TAIL, int(TAIL_FRACTION * n)))
    if rank <= n - k or k < 3:
        r = min(max(rank, 1), n) - 1
        return np.partition(xs, r, axis=1)[:, r].astype(np.float64)
    top = np.sort(np.partition(xs, n - k - 1, axis=1)[:, n - k - 1 :], axis=1)
    u = top[:, 0]
    y = top[:, 1:] - u[:, None]
    m = y.mean(axis=1)
    v = y.var(axis=1, ddof=1)
    xi = np.where(v > 0.0, np.clip(0.5 * (1.0 - m * m / np.where(v > 0.0, v, 1.0)), 0.0, xi_max), 0.0)
    sigma = m * (1.0 - xi)
    ratio = (k / n) / alpha
    safe = np.where(xi < 1e-6, 1.0, xi)
    q = np.where(xi < 1e-6, u + sigma * math.log(ratio), u + sigma / safe * (ratio**safe - 1.0))
    return np.where(m <= 0.0, top[:, -1], q)


def tail_quantile_bound(values: np.ndarray, alpha: float, confidence: float, min_block: int = 1,
                        log_scale: bool = True, floor: float = 1e-12, xi_max: float = 0.5,
                        resamples: int = 200) -> float:
    """An upper ``confidence`` bound of ``tail_quantile(values, alpha)``: the ``confidence``
    quantile of that estimate over a moving-block bootstrap of the time-ordered ``values``
    (``resamples`` series of blocks; a block spans at least ``min_block`` values and the
    values per effectively independent one, ``effective_samples``; a fixed seed, so
    deterministic). It covers the estimate's sampling spread within the calibration
    stretch, not a later normal the stretch never showed."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    if log_scale:
        v = np.log(np.maximum(v, floor))
    n = v.size
    b = max(1, min(max(int(min_block), math.ceil(n / effective_samples(v[:, None]))), n))
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n - b + 1, size=(resamples, -(-n // b)))
    idx = (starts[:, :, None] + np.arange(b)).reshape(resamples, -1)[:, :n]
    q = float(np.quantile(_gpd_quantiles(v[idx], alpha, xi_max), confidence))
    return math.exp(q) if log_scale else q

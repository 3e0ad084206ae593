"""The distance-from-normal profile of a device: mean, top eigen-directions of a shrunk
covariance of its calibration embeddings, and the rank-K + isotropic Mahalanobis distance
to it (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.scoring.tail import effective_samples, oas_shrinkage


def rank_k_distance(diff: np.ndarray, basis: np.ndarray, inv_eig: np.ndarray, inv_rest: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance / dim with a rank-K + isotropic precision.
    ``diff [N, F]``, ``basis [N, F, K]``, ``inv_eig [N, K]``, ``inv_rest [N]``."""
    proj = np.einsum("nf,nfk->nk", diff, basis)
    inside = np.einsum("nk,nk->n", proj * proj, inv_eig)
    rest = np.maximum(np.einsum("nf,nf->n", diff, diff) - np.einsum("nk,nk->n", proj, proj), 0.0)
    return np.asarray((inside + rest * inv_rest) / diff.shape[1])


def _moments(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = flat.shape[0]
    mu = flat.mean(axis=0)
    centred = flat - mu
    return mu, centred, centred.T @ centred / max(m - 1, 1)


def _intensity(centred: np.ndarray, cov: np.ndarray, settings: Mapping[str, float]) -> float:
    lam = settings["shrinkage"]
    if settings["shrinkage_auto"] > 0:  # OAS for the effectively independent windows
        lam = max(lam, oas_shrinkage(cov, effective_samples(centred)))
    return float(lam)


def profile_shrinkage(flat: np.ndarray, settings: Mapping[str, float]) -> float:
    """The covariance shrinkage intensity ``fit_profile(flat, settings)`` uses."""
    _, centred, cov = _moments(flat)
    return _intensity(centred, cov, settings)


def fit_profile(flat: np.ndarray, settings: Mapping[str, float],
                shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, top eigen-directions, their inverse eigenvalues and the inverse rest variance
    of the shrunk covariance of ``flat [M, F]`` (``shrinkage``, ``shrinkage_auto`` and
    ``max_rank`` from ``settings``; a given ``shrinkage`` intensity replaces both, e.g. a
    cross-fitting fold's, which must be regularised like the profile it stands in for)."""
    f = flat.shape[1]
    mu, centred, cov = _moments(flat)
    lam = _intensity(centred, cov, settings) if shrinkage is None else shrinkage
    shrunk = (1.0 - lam) * cov + (lam * np.trace(cov) / f + 1e-6) * np.eye(f)
    eig, vec = np.linalg.eigh(shrunk)  # ascending
    k = int(min(f, settings["max_rank"]))
    basis, top, rest = vec[:, ::-1][:, :k], eig[::-1][:k], eig[::-1][k:]
    inv_rest = 1.0 / float(rest.mean()) if rest.size else 0.0
    return mu, basis, 1.0 / top, inv_rest


def profile_distance(flat: np.ndarray, mu: np.ndarray, basis: np.ndarray, inv_eig: np.ndarray,
                     inv_rest: float) -> np.ndarray:
    """Each row of ``flat [M, F]``'s distance to the profile (``fit_profile``'s output)."""
    m = flat.shape[0]
    return rank_k_distance(flat - mu, basis[None].repeat(m, 0), inv_eig[None].repeat(m, 0), np.full(m, inv_rest))

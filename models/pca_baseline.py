"""The classic baseline ``model eval`` reports beside the model: PCA monitoring with the
Hotelling T² and Q (SPE) statistics, calibrated per series (numpy only)."""

from __future__ import annotations

import numpy as np

_EPS = 1e-9


class PCABaseline:
    """PCA monitoring of one series: Hotelling T² and Q (SPE), calibrated on normal windows.

    ``fit(windows [M, T, C])`` (standardised like the model's inputs) keeps the principal
    components that explain ``variance`` of the flattened windows (at most
    ``max_components``); ``score(windows) -> [M]`` is
    ``max(T² / T²_thr, Q / Q_thr)`` with each threshold ``quantile * margin`` over the
    calibration windows, so 1.0 is the alert threshold, as for ``WindowScorer``.
    """

    def __init__(
        self,
        variance: float = 0.95,
        max_components: int = 32,
        quantile: float = 0.995,
        margin: float = 1.5,
    ) -> None:
        self.variance, self.max_components, self.quantile, self.margin = variance, max_components, quantile, margin
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None  # [K, F]
        self.eigenvalues: np.ndarray | None = None  # [K]
        self.t2_threshold = self.q_threshold = float("nan")

    def _stats(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.components is None or self.eigenvalues is None:
            raise RuntimeError("PCABaseline.fit first")
        x = np.asarray(windows, dtype=np.float64).reshape(len(windows), -1) - self.mean
        t = x @ self.components.T
        t2 = np.sum(t * t / self.eigenvalues, axis=1)
        resid = x - t @ self.components
        return t2, np.sum(resid * resid, axis=1)

    def fit(self, windows: np.ndarray) -> PCABaseline:
        x = np.asarray(windows, dtype=np.float64).reshape(len(windows), -1)
        if x.shape[0] < 8:
            raise ValueError("need at least 8 calibration windows")
        self.mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        eig = s * s / max(x.shape[0] - 1, 1)
        frac = np.cumsum(eig) / max(eig.sum(), _EPS)
        k = min(int(np.searchsorted(frac, self.variance)) + 1, self.max_components, len(eig))
        self.components, self.eigenvalues = vt[:k], np.maximum(eig[:k], _EPS)
        t2, q = self._stats(windows)
        self.t2_threshold = float(max(np.quantile(t2, self.quantile), _EPS) * self.margin)
        self.q_threshold = float(max(np.quantile(q, self.quantile), 1e-6) * self.margin)
        return self

    @property
    def n_components(self) -> int:
        return 0 if self.components is None else int(self.components.shape[0])

    def score(self, windows: np.ndarray) -> np.ndarray:
        t2, q = self._stats(windows)
        return np.maximum(t2 / self.t2_threshold, q / self.q_threshold).astype(np.float32)

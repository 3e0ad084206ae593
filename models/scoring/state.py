"""One device's score state: its calibrated profile packed in one float32 array, the
thresholds, and the adaptation bookkeeping (numpy only; checkpointed by the gateway)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from models.scoring.settings import DEFAULTS


@dataclass(slots=True)
class DeviceScoreState:
    """Per-device scoring state: calibration buffer, then the fitted normal profile.

    Create one per device (``n_channels`` fixed; a device whose channel set changes needs
    a new state). ``calibrated`` turns True once fitted (``WindowScorer.calibrate_windows``
    or after ``calibration_windows`` scored windows). The fallback buffers (``_emb``,
    ``_res``, ``_flat``) exist only while such a state collects windows.

    The fitted profile is one float32 array (``profile``; 10,000 devices are tracked at
    once, so one array instead of five), read through the properties below:
    ``[mu (F) | residual_threshold (C) | flat_threshold (C) | precision]`` with
    ``F = C*D``. The precision is kept in whichever form is smaller, fixed by F and
    ``K = min(F, max_rank)``: the packed lower triangle of the ``[F, F]`` matrix
    (``F(F+1)/2`` floats, ``rank == 0``) when ``F + 1 <= 2K``, else ``basis [F, K]`` then
    ``inv_eig [K]`` (``rank == K``) with ``inv_rest``. A state calibrated without flatness
    keeps ``inf`` as its flat threshold (``flat_threshold`` is then None). Memory after
    calibration: ``4 * (F + 2C + min(F(F+1)/2, F*K + K))`` bytes plus about 300 of object
    headers, e.g. 2.4 KB for the bundled model (D = 16) at C = 2, 17 KB at C = 8.
    """

    n_channels: int
    calibration_windows: int = int(DEFAULTS["calibration_windows"])
    calibrated: bool = False
    seen: int = 0
    _emb: list[np.ndarray] | None = field(default=None, repr=False)
    _res: list[np.ndarray] | None = field(default=None, repr=False)
    _flat: list[np.ndarray] | None = field(default=None, repr=False)
    profile: np.ndarray | None = field(default=None, repr=False)  # the layout above
    dim: int = 0  # F = C*D
    rank: int = 0  # K of the low-rank form; 0: packed precision
    inv_rest: float = 0.0  # 1/variance of the remaining directions
    distance_threshold: float = math.nan
    cross: np.ndarray | None = field(default=None, repr=False)  # models.scoring.cross fit; None: off
    cross_threshold: float = math.nan
    calm: int = 0  # consecutive scored windows below adapt_below (gates _adapt)

    def reset(self) -> None:
        """Forget the calibration (e.g. after a sensor was replaced)."""
        self.calibrated, self.seen = False, 0
        self._emb = self._res = self._flat = None
        self.profile, self.dim, self.rank = None, 0, 0
        self.inv_rest, self.distance_threshold, self.calm = 0.0, math.nan, 0
        self.cross, self.cross_threshold = None, math.nan

    def _part(self, start: int, stop: int | None) -> np.ndarray | None:
        return None if self.profile is None else self.profile[start:stop]

    @property
    def mu(self) -> np.ndarray | None:
        """``[F]`` mean embedding (a view; assigning writes into the profile)."""
        return self._part(0, self.dim)

    @mu.setter
    def mu(self, value: np.ndarray) -> None:
        assert self.profile is not None
        self.profile[: self.dim] = value

    @property
    def residual_threshold(self) -> np.ndarray | None:
        """``[C]``."""
        return self._part(self.dim, self.dim + self.n_channels)

    @property
    def flat_threshold(self) -> np.ndarray | None:
        """``[C]``, None when calibrated without flatness (the check is off)."""
        part = self._part(self.dim + self.n_channels, self.dim + 2 * self.n_channels)
        return None if part is None or np.isinf(part).all() else part

    @property
    def precision(self) -> np.ndarray | None:
        """``[F(F+1)/2]`` packed lower triangle of the precision (None in the low-rank form)."""
        return self._part(self.dim + 2 * self.n_channels, None) if self.rank == 0 else None

    @property
    def basis(self) -> np.ndarray | None:
        """``[F, K]`` principal directions (None in the packed form)."""
        start = self.dim + 2 * self.n_channels
        part = self._part(start, start + self.dim * self.rank) if self.rank else None
        return None if part is None else part.reshape(self.dim, self.rank)

    @property
    def inv_eig(self) -> np.ndarray | None:
        """``[K]`` inverse eigenvalues (None in the packed form)."""
        return self._part(self.dim + 2 * self.n_channels + self.dim * self.rank, None) if self.rank else None


_UNPACK: dict[int, np.ndarray] = {}


def unpack_index(f: int) -> np.ndarray:
    """``[F, F]`` positions in a packed lower triangle (``np.tril_indices`` order) that
    rebuild the symmetric matrix: ``packed[..., unpack_index(F)]``."""
    idx = _UNPACK.get(f)
    if idx is None:
        i, j = np.indices((f, f))
        hi, lo = np.maximum(i, j), np.minimum(i, j)
        idx = _UNPACK[f] = hi * (hi + 1) // 2 + lo
    return idx


def packed_precision(basis: np.ndarray, inv_eig: np.ndarray, inv_rest: float) -> np.ndarray:
    """The packed lower triangle ``[F(F+1)/2]`` (float64) of the precision
    ``basis diag(inv_eig - inv_rest) basis' + inv_rest I`` (what ``WindowScorer`` keeps
    instead of the low-rank form where it is smaller)."""
    f = basis.shape[0]
    full = (basis * (inv_eig - inv_rest)) @ basis.T + inv_rest * np.eye(f)
    return full[np.tril_indices(f)]

"""Per-device calibration of readings: each channel's mean/std over a device's first
``calibration_steps`` readings, frozen, then used to standardise every window (never per
window, so a sustained level shift stays visible). Until the device's score profile is
fitted (gateway.scoring.WindowScorer.calibrate_windows) the readings are kept in one
preallocated block and cut into calibration windows. Numpy only.
"""

from __future__ import annotations

import numpy as np

from gateway.score_settings import DEFAULTS

MAX_CALIBRATION_WINDOWS = 2048
"""At most this many windows calibrate a device's scores (evenly thinned beyond)."""


def fill_forward(values: np.ndarray) -> np.ndarray:
    """Forward-fill NaN per channel of ``[L, C]`` (leading NaN take the first finite
    value; an all-NaN channel becomes 0). Returns a new float64 array."""
    x = np.array(values, dtype=np.float64)
    for c in range(x.shape[1]):
        col = x[:, c]
        ok = np.isfinite(col)
        if not ok.any():
            col[:] = 0.0
            continue
        idx = np.where(ok, np.arange(col.size), 0)
        np.maximum.accumulate(idx, out=idx)
        idx[: int(np.argmax(ok))] = int(np.argmax(ok))
        x[:, c] = col[idx]
    return x


class SeriesCalibration:
    """Per-channel mean/std of a device's first ``calibration_steps`` readings (Welford).

    ``update`` takes one reading ``[C]`` or several ``[K, C]``; non-finite values are
    skipped per channel. Once every channel has ``calibration_steps`` finite values, the
    calibration freezes (``frozen``) and later updates are ignored. The std is floored,
    ``std = max(std, min_std, 1e-3 * |mean|)``, so a channel that was constant during
    calibration does not turn tiny noise into huge z-values. Before freezing,
    ``standardize`` uses the running values (the caller should not score such windows).
    """

    __slots__ = ("n_channels", "calibration_steps", "min_std", "count", "_mean", "_m2", "frozen", "_readings",
                 "_kept")

    def __init__(
        self,
        n_channels: int,
        calibration_steps: int = int(DEFAULTS["calibration_steps"]),
        min_std: float = 1e-6,
        keep_readings: bool = True,
    ) -> None:
        if n_channels < 1 or calibration_steps < 2:
            raise ValueError("need n_channels >= 1 and calibration_steps >= 2")
        self.n_channels = n_channels
        self.calibration_steps = calibration_steps
        self.min_std = min_std
        self.count = np.zeros(n_channels, dtype=np.int64)
        self._mean = np.zeros(n_channels)
        self._m2 = np.zeros(n_channels)
        self.frozen = False
        # the calibration readings, one preallocated float32 block (4*C*steps bytes, no
        # per-row objects) until release(); keep_readings=False when nothing will cut
        # calibration windows from them
        self._readings: np.ndarray | None = (
            np.empty((calibration_steps, n_channels), dtype=np.float32) if keep_readings else None)
        self._kept = 0

    def update(self, values: np.ndarray) -> bool:
        """Accumulate readings (until frozen); returns ``frozen``."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 0 or v.ndim > 2 or v.shape[-1] != self.n_channels:
            raise ValueError(f"expected readings [C] or [K, C] with C = {self.n_channels}")
        if self.frozen:
            return True
        v = v.reshape(-1, self.n_channels)
        for row in v:
            if self._readings is not None and self._kept < len(self._readings):
                self._readings[self._kept] = row
                self._kept += 1
            ok = np.isfinite(row) & (self.count < self.calibration_steps)
            if not ok.any():
                continue
            self.count[ok] += 1
            delta = row[ok] - self._mean[ok]
            self._mean[ok] += delta / self.count[ok]
            self._m2[ok] += delta * (row[ok] - self._mean[ok])
            if (self.count >= self.calibration_steps).all():
                self.frozen = True
                break
        return self.frozen

    def freeze(self) -> None:
        """Freeze now with what was accumulated (e.g. a recording's calibration rows with
        gaps); ValueError when a channel has fewer than 2 finite readings."""
        if (self.count < 2).any():
            raise ValueError("a channel has fewer than 2 finite readings in the calibration stretch")
        self.frozen = True

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        var = np.where(self.count > 1, self._m2 / np.maximum(self.count - 1, 1), 0.0)
        return np.maximum.reduce([np.sqrt(var), np.full(self.n_channels, self.min_std), 1e-3 * np.abs(self._mean)])

    def calibration_windows(self, window_length: int, max_windows: int = MAX_CALIBRATION_WINDOWS) -> np.ndarray:
        """Standardised windows ``[M, T, C]`` (float32, stride 1, evenly thinned to at most
        ``max_windows``) cut from the retained calibration readings (missing values
        forward-filled), for ``WindowScorer.calibrate_windows``. Needs ``frozen`` and
        ``keep_readings``; empty ``[0, T, C]`` when fewer than T readings were retained."""
        if not self.frozen or self._readings is None:
            raise RuntimeError("calibration_windows needs a frozen calibration that kept its readings")
        rows = self._readings[: self._kept]
        if rows.shape[0] < window_length:
            return np.zeros((0, window_length, self.n_channels), dtype=np.float32)
        z = self.standardize(fill_forward(rows))
        windows = np.lib.stride_tricks.sliding_window_view(z, window_length, axis=0).transpose(0, 2, 1)
        keep = np.unique(np.linspace(0, len(windows) - 1, min(len(windows), max_windows)).round().astype(int))
        return np.ascontiguousarray(windows[keep], dtype=np.float32)

    def release(self) -> None:
        """Drop the retained calibration readings (after the scorer was calibrated)."""
        self._readings = None

    def standardize(self, window: np.ndarray) -> np.ndarray:
        """``window [T, C]`` (or ``[N, T, C]``) in physical units -> float32 z-values."""
        w = np.asarray(window, dtype=np.float64)
        if w.shape[-1] != self.n_channels:
            raise ValueError(f"window has {w.shape[-1]} channels, calibration has {self.n_channels}")
        return ((w - self._mean) / self.std).astype(np.float32)

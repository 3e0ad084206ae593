"""Per-device calibration of readings: each channel's mean/std over a device's first
``calibration_steps`` readings, frozen, then used to standardise every window (never per
window, so a sustained level shift stays visible). Until the device's score profile is
fitted (models.scoring.scorer.WindowScorer.calibrate_windows) the readings are kept in one
preallocated block and cut into calibration windows. The daemon takes these blocks from a
``ReadingsPool`` (memory maps, unmapped once their devices calibrated), so the calibration
of many devices at once leaves no holes in the malloc heap. Numpy only.
"""

from __future__ import annotations

import mmap

import numpy as np

from models.scoring.settings import DEFAULTS

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


class _Chunk:
    __slots__ = ("blocks", "free")

    def __init__(self, count: int, steps: int, n_channels: int) -> None:
        flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
        size = count * steps * n_channels * 4
        buffer = mmap.mmap(-1, size, flags=flags) if flags else mmap.mmap(-1, size)
        # the array keeps the map alive; it is unmapped when the array and every block
        # view handed out are gone
        self.blocks = np.frombuffer(buffer, dtype=np.float32).reshape(count, steps, n_channels)
        self.free = list(range(count - 1, -1, -1))


class ReadingsPool:
    """Calibration-reading blocks ``[steps, C]`` float32 for many devices, carved from
    anonymous memory maps of about ``chunk_bytes`` each.

    Why: a device's readings block lives only until it calibrates, while the state it
    leaves behind (the score profile) is allocated at that moment; blocks from the malloc
    heap would leave one hole per device between long-lived allocations (after a fresh
    start all devices calibrate together). A chunk is unmapped as soon as all of its
    blocks are given back, so that memory returns to the system. One thread at a time
    (the pipeline's).
    """

    def __init__(self, steps: int, n_channels: int, chunk_bytes: int = 1 << 20) -> None:
        self.shape = (steps, n_channels)
        self.per_chunk = max(1, chunk_bytes // (steps * n_channels * 4))
        self._open: list[_Chunk] = []  # chunks with a free block, newest last
        self._in_use: dict[int, int] = {}  # id(chunk) -> blocks taken
        self._chunks: dict[int, _Chunk] = {}

    def take(self) -> tuple[np.ndarray, _Chunk, int]:
        """A block ``[steps, C]`` (contents undefined) and the handle to give it back with."""
        if not self._open:
            chunk = _Chunk(self.per_chunk, *self.shape)
            self._chunks[id(chunk)] = chunk
            self._in_use[id(chunk)] = 0
            self._open.append(chunk)
        chunk = self._open[-1]
        index = chunk.free.pop()
        if not chunk.free:
            self._open.pop()
        self._in_use[id(chunk)] += 1
        return chunk.blocks[index], chunk, index

    def give_back(self, chunk: _Chunk, index: int) -> None:
        """Return a block (its view must no longer be used); a chunk left empty is dropped."""
        key = id(chunk)
        if self._chunks.get(key) is not chunk:
            return
        if not chunk.free:
            self._open.insert(0, chunk)
        chunk.free.append(index)
        self._in_use[key] -= 1
        if self._in_use[key] == 0:
            del self._chunks[key], self._in_use[key]
            self._open.remove(chunk)

    @property
    def chunks(self) -> int:
        """Memory maps currently held."""
        return len(self._chunks)


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
                 "_kept", "_pool", "_block")

    def __init__(
        self,
        n_channels: int,
        calibration_steps: int = int(DEFAULTS["calibration_steps"]),
        min_std: float = 1e-6,
        keep_readings: bool = True,
        pool: ReadingsPool | None = None,
    ) -> None:
        """``pool``: take the readings block from it (shape ``(calibration_steps, n_channels)``)
        and give it back on ``release`` (or when this object is dropped before)."""
        if n_channels < 1 or calibration_steps < 2:
            raise ValueError("need n_channels >= 1 and calibration_steps >= 2")
        if pool is not None and pool.shape != (calibration_steps, n_channels):
            raise ValueError(f"pool blocks are {pool.shape}, need {(calibration_steps, n_channels)}")
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
        self._pool = pool if keep_readings else None
        self._block: tuple[_Chunk, int] | None = None  # the pool's handle of _readings
        self._readings: np.ndarray | None = None
        if self._pool is not None:
            block, chunk, index = self._pool.take()
            self._readings, self._block = block, (chunk, index)
        elif keep_readings:
            self._readings = np.empty((calibration_steps, n_channels), dtype=np.float32)
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
        if self._block is not None and self._pool is not None:
            chunk, index = self._block
            self._block = None
            self._pool.give_back(chunk, index)

    def export_state(self) -> dict[str, object]:
        """Everything this calibration has accumulated, as plain data (arrays are copies) for
        a checkpoint; ``from_state`` rebuilds it."""
        kept = None if self._readings is None else self._readings[: self._kept].copy()
        return {"n_channels": self.n_channels, "calibration_steps": self.calibration_steps, "min_std": self.min_std,
                "count": self.count.copy(), "mean": self._mean.copy(), "m2": self._m2.copy(),
                "frozen": self.frozen, "readings": kept}

    @classmethod
    def from_state(cls, state: dict, pool: ReadingsPool | None = None) -> "SeriesCalibration":
        """The calibration ``export_state`` described (ValueError when it does not fit)."""
        c, steps = int(state["n_channels"]), int(state["calibration_steps"])
        readings = state["readings"]
        cal = cls(c, steps, float(state["min_std"]), keep_readings=readings is not None, pool=pool)
        count, mean, m2 = (np.asarray(state[k]) for k in ("count", "mean", "m2"))
        if count.shape != (c,) or mean.shape != (c,) or m2.shape != (c,):
            raise ValueError("calibration state does not match its channel count")
        cal.count[:], cal._mean[:], cal._m2[:] = count, mean, m2
        cal.frozen = bool(state["frozen"])
        if readings is not None and cal._readings is not None:
            rows = np.asarray(readings, dtype=np.float32).reshape(-1, c)[:steps]
            cal._readings[: len(rows)] = rows
            cal._kept = len(rows)
        return cal

    def __del__(self) -> None:
        # a device dropped while calibrating (evicted): its pooled block goes back
        if getattr(self, "_block", None) is not None:
            self.release()

    def standardize(self, window: np.ndarray) -> np.ndarray:
        """``window [T, C]`` (or ``[N, T, C]``) in physical units -> float32 z-values."""
        w = np.asarray(window, dtype=np.float64)
        if w.shape[-1] != self.n_channels:
            raise ValueError(f"window has {w.shape[-1]} channels, calibration has {self.n_channels}")
        return ((w - self._mean) / self.std).astype(np.float32)

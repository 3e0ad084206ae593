"""Bounded per-device windows of readings.

Each device has a ring of its last T readings over a fixed channel list (set by its first
reading, or by its profile's channel mapping) plus a mask of which values were present.
A missing channel repeats the last value with mask 0. Readings with channels outside the
device's list are still used for the known channels; the extra ones are counted
(``window_channels_ignored_total``). The store holds at most ``max_devices`` devices and
evicts the least recently seen one (counted) beyond that.

Memory per device (10,000 are tracked at once): one row of a ring array ``[rows, T, C]``
float32 that holds every device with C channels (``RingArray``: no array object per
device; rows of evicted devices are reused), the mask as the bits of one int (C bits per
reading), and a channel list + index shared by every device with the same channels (the
store interns them). A ``DeviceWindow`` is the device's handle on its row.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from gateway.metrics import Metrics
from gateway.types import Reading

MAX_SHARED_LAYOUTS = 1024
"""Distinct channel lists the store interns (shared by devices); beyond it each new
device gets its own copy (bounded memory whatever channel names arrive)."""


_TIME_ORDERS: dict[int, list[np.ndarray]] = {}


def _time_order(length: int) -> list[np.ndarray]:
    """For each write position p of a ring of ``length`` rows, the row indices oldest first
    (``[p, ..., length-1, 0, ..., p-1]``): one ``take`` reads a ring in time order (2-4x
    faster than joining the two slices), shared by every ring of that length."""
    orders = _TIME_ORDERS.get(length)
    if orders is None:
        orders = _TIME_ORDERS[length] = [np.r_[p:length, 0:p].astype(np.intp) for p in range(length)]
    return orders


class RingArray:
    """The rings of every device with the same channel count: ``values[row]`` is one
    device's ``[T, C]`` ring. Rows are handed out in order and given back on eviction
    (reused first). The array doubles when full, up to ``max_rows``; it is allocated
    zeroed (calloc), so rows not yet handed out cost address space, not memory."""

    __slots__ = ("values", "max_rows", "_free", "_next")

    def __init__(self, length: int, n_channels: int, max_rows: int, initial_rows: int = 64) -> None:
        self.max_rows = max(1, max_rows)
        self.values = np.zeros((min(initial_rows, self.max_rows), length, n_channels), dtype=np.float32)
        self._free: list[int] = []
        self._next = 0

    @property
    def rows_used(self) -> int:
        return self._next - len(self._free)

    def take(self) -> int:
        """A zeroed row for a new device."""
        if self._free:
            row = self._free.pop()
            self.values[row] = 0.0
            return row
        row = self._next
        if row >= len(self.values):
            if row >= self.max_rows:
                raise RuntimeError(f"ring array full ({self.max_rows} rows)")
            grown = np.zeros((min(2 * len(self.values), self.max_rows),) + self.values.shape[1:], dtype=np.float32)
            grown[:row] = self.values
            self.values = grown
        self._next = row + 1
        return row

    def give_back(self, row: int) -> None:
        self._free.append(row)


class DeviceWindow:
    """A device's ring ``[T, C]`` of readings (a row of a ``RingArray``), oldest first when read."""

    __slots__ = ("device_id", "channels", "_index", "_ring", "_row", "_mask_bits", "_length", "_pos", "count",
                 "last_timestamp", "adapter", "state")

    def __init__(self, device_id: str, channels: list[str], length: int, adapter: str | None = None,
                 index: dict[str, int] | None = None, ring: RingArray | None = None) -> None:
        """``channels`` (and ``index``, channel -> column, built when None) may be shared
        with other windows: neither is ever modified. ``ring``: the store's ring array for
        this channel count (a row is taken from it); None: a private one-row ring."""
        self.device_id = device_id
        self.channels = channels
        self._index = {c: i for i, c in enumerate(channels)} if index is None else index
        # ring: row pos is the next one written; a read in time order takes the rows
        # [pos:] then [:pos] in one copy (``_time_order``)
        self._ring = RingArray(length, len(channels), 1, 1) if ring is None else ring
        self._row = self._ring.take()
        # presence of each channel in the last T readings: bit i of the lowest C bits is
        # channel i of the newest reading, the next C bits the reading before, ...
        self._mask_bits = 0
        self._length = length
        self._pos = 0
        self.count = 0
        self.last_timestamp = 0.0
        self.adapter = adapter
        self.state: object | None = None  # scoring state, owned by the scorer

    @property
    def length(self) -> int:
        return self._length

    @property
    def _values(self) -> np.ndarray:
        """This device's ``[T, C]`` ring (a view of its row; valid until the store grows
        or evicts it)."""
        return self._ring.values[self._row]

    def _detach(self) -> None:
        """Leave the store's ring array (evicted or removed): the values move to a private
        ring, so a handle still held elsewhere reads what it read before."""
        private = RingArray(self._length, len(self.channels), 1, 1)
        private.values[0] = self._values
        self._ring.give_back(self._row)
        self._ring, self._row = private, private.take()

    @property
    def full(self) -> bool:
        return self.count >= self._length

    def push(self, values: dict[str, float], timestamp: float) -> tuple[np.ndarray, int]:
        """Append one reading; returns (the row written ``[C]``, number of unknown channels)."""
        row_index = self._pos
        length = self._length
        ring = self._ring.values[self._row]
        row = ring[row_index]
        if self.count:
            row[:] = ring[row_index - 1]  # -1: the last row, the newest one when pos is 0
        else:
            row[:] = 0.0
        unknown = 0
        present = 0
        index = self._index
        for name, value in values.items():
            i = index.get(name)
            if i is None:
                unknown += 1
                continue
            row[i] = value
            present |= 1 << i
        c = len(row)
        self._mask_bits = ((self._mask_bits << c) | present) & ((1 << (length * c)) - 1)
        self._pos = (row_index + 1) % length
        self.count += 1
        self.last_timestamp = timestamp
        return row, unknown

    def export_state(self) -> dict[str, Any]:
        """The ring as plain data for ``gateway.state.codec`` (``WindowStore.import_window``
        takes it back). Arrays are views: encode them before the next push. ``state`` (the
        scoring state) is the inference engine's to export."""
        return {"channels": list(self.channels), "adapter": self.adapter, "length": self._length,
                "values": self._values, "mask_bits": self._mask_bits, "pos": self._pos, "count": self.count,
                "last_timestamp": self.last_timestamp}

    def latest(self) -> np.ndarray:
        """The newest row ``[C]`` (a view; valid until the next push)."""
        return self._ring.values[self._row, self._pos - 1]

    def values(self) -> np.ndarray:
        """The window ``[T, C]`` in time order (a copy)."""
        pos, ring = self._pos, self._ring.values[self._row]
        return ring.take(_time_order(self._length)[pos], axis=0) if pos else ring.copy()

    def mask(self) -> np.ndarray:
        """``[T, C]`` float32 in time order, 1.0 where the reading had the channel."""
        t, c, bits = self._length, len(self.channels), self._mask_bits
        newest_first = np.array([(bits >> k) & 1 for k in range(t * c)], dtype=np.float32).reshape(t, c)
        return np.ascontiguousarray(newest_first[::-1])


class WindowStore:
    """All tracked devices' windows, bounded by ``max_devices`` (least recently seen evicted)."""

    def __init__(self, length: int, max_devices: int, metrics: Metrics) -> None:
        self.length = length
        self.max_devices = max_devices
        self.metrics = metrics
        self._windows: OrderedDict[str, DeviceWindow] = OrderedDict()
        self._layouts: dict[tuple[str, ...], tuple[list[str], dict[str, int]]] = {}
        self._rings: dict[int, RingArray] = {}  # channel count -> the ring array of those devices
        self._evicted: set[str] | None = None  # ids evicted since drain_evicted (once asked for)

    def __len__(self) -> int:
        return len(self._windows)

    def get(self, device_id: str) -> DeviceWindow | None:
        return self._windows.get(device_id)

    def add(self, reading: Reading, channels: list[str] | None = None, adapter: str | None = None,
            exclude: str | None = None) -> DeviceWindow:
        """Push a reading into its device's window, creating the window on first sight.

        ``exclude`` names a field that is never a channel (the profile's battery field)."""
        window = self._windows.get(reading.device_id)
        if window is None:
            chans = channels or sorted(c for c in reading.values if c != exclude)
            chans, index = self._layout(chans)
            window = DeviceWindow(reading.device_id, chans, self.length, adapter, index, self._ring(len(chans)))
            self._windows[reading.device_id] = window
            self._evict_beyond_limit()
        else:
            self._windows.move_to_end(reading.device_id)
        _, unknown = window.push(reading.values, reading.timestamp)
        if exclude is not None and exclude in reading.values and exclude not in window._index:
            unknown -= 1
        if unknown:
            self.metrics.inc("window_channels_ignored_total", unknown)
        return window

    def _evict_beyond_limit(self) -> None:
        while len(self._windows) > self.max_devices:
            evicted, window = self._windows.popitem(last=False)
            window._detach()
            self.metrics.inc("devices_evicted_total")
            if self._evicted is not None:
                self._evicted.add(evicted)

    def remove(self, device_id: str) -> bool:
        """Forget a device (handed to another gateway); counted like an eviction for the
        checkpoint (its row is deleted), not in ``devices_evicted_total``."""
        window = self._windows.pop(device_id, None)
        if window is None:
            return False
        window._detach()
        if self._evicted is not None:
            self._evicted.add(device_id)
        return True

    def drain_evicted(self) -> set[str]:
        """Ids evicted since the last call (the checkpoint deletes their rows); the first call
        starts the tracking (bounded: it is drained at every checkpoint)."""
        out, self._evicted = self._evicted or set(), set()
        return out

    def import_window(self, device_id: str, state: dict[str, Any]) -> DeviceWindow | None:
        """Install a window from ``DeviceWindow.export_state`` data as the most recently seen
        device (replacing any window it has); None when it does not fit this store (another
        window length, or values of the wrong shape)."""
        if int(state["length"]) != self.length:
            return None
        chans, index = self._layout([str(c) for c in state["channels"]])
        values = np.asarray(state["values"], dtype=np.float32)
        pos, count = int(state["pos"]), int(state["count"])
        if values.shape != (self.length, len(chans)) or not 0 <= pos < self.length or count < 0:
            return None
        old = self._windows.pop(device_id, None)
        if old is not None:
            old._detach()
        window = DeviceWindow(device_id, chans, self.length, state["adapter"], index, self._ring(len(chans)))
        window._values[:] = values
        window._mask_bits = int(state["mask_bits"])
        window._pos, window.count = pos, count
        window.last_timestamp = float(state["last_timestamp"])
        self._windows[device_id] = window
        self._windows.move_to_end(device_id)
        self._evict_beyond_limit()
        return window if device_id in self._windows else None

    def _ring(self, n_channels: int) -> RingArray:
        ring = self._rings.get(n_channels)
        if ring is None:  # + 1: a new device is added before the least recently seen one leaves
            ring = self._rings[n_channels] = RingArray(self.length, n_channels, self.max_devices + 1)
        return ring

    def ring_arrays(self) -> dict[int, RingArray]:
        """Channel count -> the ring array of those devices (read-only use)."""
        return dict(self._rings)

    def _layout(self, channels: list[str]) -> tuple[list[str], dict[str, int] | None]:
        """The interned (channel list, index) for ``channels``, shared by every window with
        the same list; ``channels`` and None (the window builds its own) once
        ``MAX_SHARED_LAYOUTS`` lists are interned."""
        key = tuple(channels)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= MAX_SHARED_LAYOUTS:
                return channels, None
            layout = self._layouts[key] = (list(channels), {c: i for i, c in enumerate(channels)})
        return layout

    def devices(self) -> list[DeviceWindow]:
        return list(self._windows.values())

"""Per-device state of the alert policy: one lifecycle track per alert kind, the raise
history for rate limits, the learnt reporting interval; and the helpers that name and key
alerts. Plain data (slots, arrays) so the state checkpoint (``gateway.state``) can pack it."""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from typing import Literal

from gateway.types import AlertState, Reading

Severity = Literal["info", "warning", "critical"]
KINDS = ("anomaly", "battery_low", "link_quality", "frame_gap", "device_silent")
KIND_BIT = {kind: 1 << i for i, kind in enumerate(KINDS)}
HOUR = 3600.0
INTERVAL_HISTORY = 16


def guess_battery_unit(reading: Reading, value: float) -> str:
    """Volts when the value came from a voltage-named channel, else percent."""
    for name, v in reading.values.items():
        if v == value:
            low = name.lower()
            if low.endswith("_v") or "volt" in low or low in ("bat_v", "vbat", "vbatt"):
                return "V"
    return "%"


def alert_key(device_id: str, kind: str, state: AlertState, episode_start: float) -> str:
    """Idempotency key of one alert event: 32 hex digits of sha256 over its identity.

    The same (device, kind, state, episode start) always gives the same key, so a replayed
    or re-generated event is recognisably the same event.
    """
    ident = f"{device_id}\x1f{kind}\x1f{state}\x1f{episode_start:.6f}"
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]


@dataclass(slots=True)
class KindTrack:
    """Lifecycle of one (device, kind)."""

    raised: bool = False
    run: int = 0  # consecutive inputs pushing towards the other state
    run_start: float | None = None  # timestamp of the first input of that run
    episode_start: float = 0.0
    held: bool = False  # a raise is being held back by a rate limit (counted once)
    last_raise: float | None = None
    channel: str | None = None  # the channel named by the raise; its clear names the same one


def link_message(rssi: float | None, snr: float | None) -> str:
    """``link quality low: median RSSI -121 dBm, SNR -7.5 dB``: the medians with ``%g``
    (they are floats); one not taken (its rule disabled, no values) is left out."""
    medians = ([] if rssi is None else [f"RSSI {rssi:g} dBm"]) + ([] if snr is None else [f"SNR {snr:g} dB"])
    return "link quality low: median " + ", ".join(medians)


def push_bounded(values: array[float] | None, value: float, limit: int) -> array[float]:
    """Append ``value`` to a flat float array holding at most ``limit`` values (oldest
    dropped); creates the array on first use."""
    if values is None:
        return array("d", (value,))
    if len(values) >= limit:
        del values[: len(values) - limit + 1]
    values.append(value)
    return values


@dataclass(slots=True)
class DeviceAlerts:
    """Everything the policy remembers about one device (bounded, and small: the policy
    keeps up to ``max_devices`` of these). A kind's ``KindTrack`` is created the first time
    its condition pushes (until then it would hold only defaults), ``seen`` remembers which
    kinds had an input (``raised()`` lists them), and the recent-value windows are flat
    float arrays created on first use (an empty deque alone is 760 bytes)."""

    tracks: dict[str, KindTrack] | None = None
    seen: int = 0  # one KIND_BIT per kind that had an input
    raises: list[float] | None = None  # raise times within the last hour, at most the hourly limit
    last_seen: float | None = None
    intervals: array[float] | None = None  # the last INTERVAL_HISTORY reading intervals
    expected_interval_s: float | None = None
    rssi: array[float] | None = None  # the last link_window values
    snr: array[float] | None = None
    last_fcnt: int | None = None

    def track(self, kind: str) -> KindTrack:
        """The kind's track, created (with defaults) if it has none yet."""
        tracks = self.tracks
        if tracks is None:
            tracks = self.tracks = {}
        t = tracks.get(kind)
        if t is None:
            t = tracks[kind] = KindTrack()
        self.seen |= KIND_BIT[kind]
        return t

    def existing_track(self, kind: str) -> KindTrack | None:
        return self.tracks.get(kind) if self.tracks else None

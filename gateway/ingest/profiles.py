"""Device profiles: which decoder a device group uses and how decoded fields become channels.

``ProfileSet(profiles).match(uplink)`` picks one profile per uplink, by precedence:

1. a profile whose ``match_dev_eui`` lists the uplink's device id (exact, case-insensitive);
2. else the first profile (config order) with a ``match_name`` pattern that matches the
   device name;
3. else the first profile with only a ``match_f_port`` that equals the uplink's fPort;
4. else the first profile with no match criteria at all, else ``DEFAULT_PROFILE`` (auto
   codec, every numeric field).

Within tiers 1 and 2 a profile's other criteria must hold too (a profile with
``match_name="lht65-*"`` and ``match_f_port=2`` needs both). Results are cached per
(device id, name, fPort) in a bounded dict, so matching costs one lookup per uplink.

``to_reading(uplink, decoded, profile)`` maps decoded fields to channels: nested dicts
are flattened with dots (``{"gps": {"lat": 1}}`` -> ``gps.lat``); only finite numbers
count (booleans, strings and None are ignored); with ``channels=None`` every numeric field
becomes a channel of the same name except battery fields (names starting with ``bat``)
and radio fields (``rssi``, ``snr``, ...). When ``battery_field`` is set and present its
value is added to the reading under that field name, so the alert policy's battery rule
finds it (with ``channels=None`` it then is a window channel too; list channels
explicitly to keep it out of the model).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.types import DecodeError, RawUplink, Reading

RADIO_FIELDS: frozenset[str] = frozenset({
    "rssi", "snr", "lsnr", "lorasnr", "spreading_factor", "spreadingfactor", "sf",
    "frequency_hz", "bandwidth", "bandwidth_hz", "f_cnt", "fcnt", "f_port", "fport", "dr",
    "data_rate", "gateway_id", "channel_rssi",
})

_CACHE_MAX = 8192


class ProfileConfig(BaseModel):
    """One device profile: how to match devices, decode their uplinks and name channels."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Profile name, shown in logs and metrics.")
    match_dev_eui: list[str] = Field(
        default_factory=list,
        description="Device ids (DevEUIs, hex, any case) this profile applies to; exact match, checked first.")
    match_name: str | None = Field(
        None, description="fnmatch pattern on the device name (e.g. `lht65-*`), checked after DevEUIs.")
    match_f_port: int | None = Field(
        None, ge=0, le=255, description="LoRaWAN fPort this profile applies to, checked last.")
    codec: str | None = Field(
        None, description="Decoder codec name (`lora-gateway decode --list-codecs`); empty = auto-detect.")
    channels: dict[str, str] | None = Field(
        None,
        description="Model channel name -> decoded field name (dotted for nested fields); "
                    "empty = every numeric decoded field except battery and radio fields.")
    battery_field: str | None = Field(
        None, description="Decoded field holding the battery level, for the battery-low rule.")
    battery_low: float | None = Field(
        None, description="Battery level at or below which a battery_low alert is raised (field's unit).")
    adapter: str | None = Field(
        None, description="LoRA adapter name (a key of `adapters`) scoring this device group.")
    expected_interval_s: float | None = Field(
        None, gt=0, description="Expected seconds between uplinks; silence past it raises device_silent.")

    @field_validator("match_dev_eui")
    @classmethod
    def _normalise_euis(cls, value: list[str]) -> list[str]:
        out = []
        for eui in value:
            text = eui.strip()
            compact = re.sub(r"[-:\s]", "", text)
            out.append(compact.lower() if re.fullmatch(r"[0-9a-fA-F]{16}", compact) else text.lower())
        return out

    @field_validator("codec")
    @classmethod
    def _auto_codec(cls, value: str | None) -> str | None:
        return None if value is None or value.strip() in ("", "auto") else value.strip()


DEFAULT_PROFILE = ProfileConfig(name="default")


class ProfileSet:
    """Profiles in config order, matched per uplink (see the module docstring)."""

    def __init__(self, profiles: Iterable[ProfileConfig] = ()) -> None:
        self.profiles: list[ProfileConfig] = list(profiles)
        self._by_eui: dict[str, list[ProfileConfig]] = {}
        self._by_name: list[tuple[re.Pattern[str], ProfileConfig]] = []
        self._by_port: list[ProfileConfig] = []
        self.default: ProfileConfig = DEFAULT_PROFILE
        found_default = False
        for p in self.profiles:
            if p.match_dev_eui:
                for eui in p.match_dev_eui:
                    self._by_eui.setdefault(eui, []).append(p)
            elif p.match_name is not None:
                self._by_name.append((re.compile(fnmatch.translate(p.match_name)), p))
            elif p.match_f_port is not None:
                self._by_port.append(p)
            elif not found_default:
                self.default, found_default = p, True
        self._cache: dict[tuple[str, str | None, int | None], ProfileConfig] = {}

    def match(self, uplink: RawUplink) -> ProfileConfig:
        """The profile for ``uplink``; always returns one (the default at worst)."""
        key = (uplink.device_id, uplink.device_name, uplink.f_port)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._match(*key)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _match(self, device_id: str, name: str | None, f_port: int | None) -> ProfileConfig:
        for p in self._by_eui.get(device_id.lower(), ()):
            if _name_ok(p, name) and (p.match_f_port is None or p.match_f_port == f_port):
                return p
        if name is not None:
            for pattern, p in self._by_name:
                if pattern.match(name) and (p.match_f_port is None or p.match_f_port == f_port):
                    return p
        if f_port is not None:
            for p in self._by_port:
                if p.match_f_port == f_port:
                    return p
        return self.default

    def __len__(self) -> int:
        return len(self.profiles)


def _name_ok(p: ProfileConfig, name: str | None) -> bool:
    return p.match_name is None or (name is not None and fnmatch.fnmatchcase(name, p.match_name))


def flatten(decoded: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys (at most 8 levels deep; deeper is dropped)."""
    out: dict[str, Any] = {}
    for key, value in decoded.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < 8:
                out.update(flatten(value, name + ".", depth + 1))
        else:
            out[name] = value
    return out


def _number(name: str, value: Any) -> float | None:
    """A finite float for int/float values; None for non-numbers; DecodeError for NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise DecodeError(f"non_finite: field {name!r}")
    return f


def is_auto_channel(name: str) -> bool:
    """True for fields that become channels when a profile lists none."""
    leaf = name.rsplit(".", 1)[-1].lower()
    return not leaf.startswith("bat") and leaf not in RADIO_FIELDS


def to_reading(uplink: RawUplink, decoded: dict[str, Any], profile: ProfileConfig) -> Reading:
    """Build the Reading for ``uplink`` from decoder output ``decoded`` under ``profile``.

    Raises DecodeError ``non_finite`` when a selected field is NaN or infinite. An empty
    ``values`` dict is possible here; ``gateway.ingest.decoding.decode_uplink`` rejects it.
    """
    return build_reading(uplink, decoded, profile)[0]


def build_reading(uplink: RawUplink, decoded: dict[str, Any],
                  profile: ProfileConfig) -> tuple[Reading, int]:
    """``to_reading`` plus the number of channel values (the battery value not counted)."""
    flat = flatten(decoded) if any(isinstance(v, dict) for v in decoded.values()) else decoded
    values: dict[str, float] = {}
    if profile.channels is None:
        for name, raw in flat.items():
            if is_auto_channel(name):
                num = _number(name, raw)
                if num is not None:
                    values[name] = num
    else:
        for channel, field in profile.channels.items():
            num = _number(field, flat.get(field))
            if num is not None:
                values[channel] = num
    n_channels = len(values)
    if profile.battery_field is not None and profile.battery_field not in values:
        num = _number(profile.battery_field, flat.get(profile.battery_field))
        if num is not None:
            values[profile.battery_field] = num
    reading = Reading(
        device_id=uplink.device_id,
        timestamp=uplink.received_at,
        values=values,
        radio=uplink.radio,
        f_cnt=uplink.f_cnt,
        device_name=uplink.device_name,
        source=uplink.source,
    )
    return reading, n_channels

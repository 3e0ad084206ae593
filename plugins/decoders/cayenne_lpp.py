"""Decoder ``cayenne_lpp``: Cayenne Low Power Payload, the whole type table.

Frame: repeated ``[channel:1][type:1][value:size]``, values big-endian. Field names are
``<type name>_<channel>``; multi-value types are flattened with a dot:

==========  =====================  ====  ==========================================
LPP type    field                  size  value
==========  =====================  ====  ==========================================
0   (0x00)  digital_input_N        1     unsigned
1   (0x01)  digital_output_N       1     unsigned
2   (0x02)  analog_input_N         2     signed, /100
3   (0x03)  analog_output_N        2     signed, /100
100 (0x64)  generic_sensor_N       4     unsigned
101 (0x65)  illuminance_N          2     unsigned, lux
102 (0x66)  presence_N             1     unsigned
103 (0x67)  temperature_N          2     signed, /10 degC
104 (0x68)  humidity_N             1     unsigned, /2 %RH (spec: 1 byte, 0.5 %)
113 (0x71)  accelerometer_N.x/.y/.z 6    signed, /1000 G per axis
115 (0x73)  barometer_N            2     unsigned, /10 hPa
116 (0x74)  voltage_N              2     unsigned, /100 V
117 (0x75)  current_N              2     unsigned, /1000 A
118 (0x76)  frequency_N            4     unsigned, Hz
120 (0x78)  percentage_N           1     unsigned, %
121 (0x79)  altitude_N             2     signed, m
125 (0x7D)  concentration_N        2     unsigned, ppm
128 (0x80)  power_N                2     unsigned, W
130 (0x82)  distance_N             4     unsigned, /1000 m
131 (0x83)  energy_N               4     unsigned, /1000 kWh
132 (0x84)  direction_N            2     unsigned, deg
133 (0x85)  unix_time_N            4     unsigned, s
134 (0x86)  gyrometer_N.x/.y/.z    6     signed, /100 deg/s per axis
135 (0x87)  colour_N.r/.g/.b       3     unsigned bytes
136 (0x88)  gps_N.latitude/.longitude/.altitude  9  3+3+3 signed: /10000 deg, /10000 deg, /100 m
142 (0x8E)  switch_N               1     unsigned (0/1)
==========  =====================  ====  ==========================================

Voltage and current are unsigned as the ElectronicCats header and decoder.js say (its
``getTypeSigned()`` disagrees). Polyline (0xF0, variable length, one library only) is
not supported and is reported as an unknown type. All values are floats.

Contract: ``decode_lpp(data) -> dict[str, float]`` raises DecodeError with reason
``lpp_empty``, ``lpp_truncated``, ``lpp_unknown_type`` or ``lpp_duplicate_field``. In auto
mode the plugin claims a payload only when the whole payload decodes; otherwise None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.hookspecs import hookimpl
from gateway.types import DecodeError, RawUplink
from plugins.decoders._common import fail

CODEC = "cayenne_lpp"


def _int(data: bytes, signed: bool) -> int:
    return int.from_bytes(data, "big", signed=signed)


def _scalar(name: str, size: int, divisor: float, signed: bool) -> tuple[str, int, Callable[[bytes], dict[str, float]]]:
    def conv(raw: bytes) -> dict[str, float]:
        return {"": _int(raw, signed) / divisor}

    return name, size, conv


def _triple(name: str, width: int, divisors: tuple[float, float, float], axes: tuple[str, str, str],
            signed: bool) -> tuple[str, int, Callable[[bytes], dict[str, float]]]:
    def conv(raw: bytes) -> dict[str, float]:
        return {
            f".{axis}": _int(raw[i * width:(i + 1) * width], signed) / div
            for i, (axis, div) in enumerate(zip(axes, divisors))
        }

    return name, width * 3, conv


# LPP type id -> (field base name, value size in bytes, converter to {suffix: value})
LPP_TYPES: dict[int, tuple[str, int, Callable[[bytes], dict[str, float]]]] = {
    0: _scalar("digital_input", 1, 1, False),
    1: _scalar("digital_output", 1, 1, False),
    2: _scalar("analog_input", 2, 100, True),
    3: _scalar("analog_output", 2, 100, True),
    100: _scalar("generic_sensor", 4, 1, False),
    101: _scalar("illuminance", 2, 1, False),
    102: _scalar("presence", 1, 1, False),
    103: _scalar("temperature", 2, 10, True),
    104: _scalar("humidity", 1, 2, False),
    113: _triple("accelerometer", 2, (1000, 1000, 1000), ("x", "y", "z"), True),
    115: _scalar("barometer", 2, 10, False),
    116: _scalar("voltage", 2, 100, False),
    117: _scalar("current", 2, 1000, False),
    118: _scalar("frequency", 4, 1, False),
    120: _scalar("percentage", 1, 1, False),
    121: _scalar("altitude", 2, 1, True),
    125: _scalar("concentration", 2, 1, False),
    128: _scalar("power", 2, 1, False),
    130: _scalar("distance", 4, 1000, False),
    131: _scalar("energy", 4, 1000, False),
    132: _scalar("direction", 2, 1, False),
    133: _scalar("unix_time", 4, 1, False),
    134: _triple("gyrometer", 2, (100, 100, 100), ("x", "y", "z"), True),
    135: _triple("colour", 1, (1, 1, 1), ("r", "g", "b"), False),
    136: _triple("gps", 3, (10000, 10000, 100), ("latitude", "longitude", "altitude"), True),
    142: _scalar("switch", 1, 1, False),
}


def decode_lpp(data: bytes) -> dict[str, float]:
    """Decode a whole Cayenne LPP frame into ``{"<name>_<channel>[.<part>]": float}``."""
    if not data:
        raise fail("lpp_empty")
    out: dict[str, float] = {}
    i, n = 0, len(data)
    while i < n:
        if i + 2 > n:
            raise fail("lpp_truncated", f"header at byte {i}")
        channel, type_id = data[i], data[i + 1]
        spec = LPP_TYPES.get(type_id)
        if spec is None:
            raise fail("lpp_unknown_type", f"type {type_id} at byte {i + 1}")
        name, size, conv = spec
        start = i + 2
        if start + size > n:
            raise fail("lpp_truncated", f"{name} on channel {channel} needs {size} bytes")
        for suffix, value in conv(data[start:start + size]).items():
            key = f"{name}_{channel}{suffix}"
            if key in out:
                raise fail("lpp_duplicate_field", key)
            out[key] = float(value)
        i = start + size
    return out


@hookimpl(trylast=True)
def lora_gateway_decode(uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
    if codec is None:
        try:
            return decode_lpp(uplink.payload)
        except DecodeError:
            return None
    if codec != CODEC:
        return None
    return decode_lpp(uplink.payload)


@hookimpl
def lora_gateway_decode_batch(uplinks: list[RawUplink], codec: str) -> list[dict[str, Any] | None] | None:
    """A chunk's LPP payloads in one call; an invalid one is left to ``lora_gateway_decode``."""
    if codec != CODEC:
        return None
    out: list[dict[str, Any] | None] = []
    for uplink in uplinks:
        try:
            out.append(decode_lpp(uplink.payload))
        except DecodeError:
            out.append(None)
    return out


@hookimpl
def lora_gateway_codecs() -> list[str]:
    return [CODEC]

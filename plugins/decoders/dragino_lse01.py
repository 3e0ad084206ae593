"""Decoder ``dragino_lse01``: Dragino LSE01 soil moisture / EC sensor, fPort 2, 11 bytes.

Layout (Dragino's own decoders, V1.2.1 for ChirpStack v4 and the TTN V1.1.4 script; the
TTN device-repository decoder agrees on bytes 0-9 but ignores byte 10), big-endian:
bytes 0-1 battery (mV in bits 13-0), 2-3 DS18B20 probe (int16 /10 degC, 0 when absent),
4-5 soil moisture, 6-7 soil temperature, 8-9 conductivity, 10 flags (bit 7 mode:
0 normal, 1 raw; bit 4 soil sensor detected; bits 3-0 interrupt).

Fields (numbers are floats):

- ``battery_v``: V
- ``external_temperature``: DS18B20 probe, degC
- normal mode (bit 7 = 0): ``soil_moisture`` (%, u16 /100), ``soil_temperature``
  (degC, int16 /100), ``soil_conductivity`` (uS/cm, u16)
- raw mode (bit 7 = 1, as Dragino's decoder does): ``soil_dielectric_constant``
  (u16 /10), ``soil_moisture_raw`` (u16), ``soil_conductivity_raw`` (u16)
- ``mode``: "normal" or "raw"; ``soil_sensor_detected``: bool; ``interrupt``: bool

Soil temperature uses the two's complement of the int16 (the layout says int16);
Dragino's scripts compute ``(v - 0xFFFF) / 100`` for negatives, 0.01 degC off.

Contract: ``decode_lse01(data, f_port=None) -> dict`` raises DecodeError ``bad_length`` or
``unsupported_f_port``. Only decodes when the profile names ``dragino_lse01``.
"""

from __future__ import annotations

from typing import Any

from gateway.hookspecs import hookimpl
from gateway.types import RawUplink
from plugins.decoders._common import fail, s16be, u16be

CODEC = "dragino_lse01"
F_PORT = 2


def decode_lse01(data: bytes, f_port: int | None = None) -> dict[str, Any]:
    """Decode one LSE01 uplink; see the module docstring for fields and errors."""
    if f_port is not None and f_port != F_PORT:
        raise fail("unsupported_f_port", str(f_port))
    if len(data) != 11:
        raise fail("bad_length", f"{len(data)} bytes, expected 11")
    flags = data[10]
    raw_mode = bool(flags & 0x80)
    out: dict[str, Any] = {
        "battery_v": (u16be(data, 0) & 0x3FFF) / 1000,
        "external_temperature": s16be(data, 2) / 10,
        "mode": "raw" if raw_mode else "normal",
        "soil_sensor_detected": bool(flags & 0x10),
        "interrupt": bool(flags & 0x0F),
    }
    if raw_mode:
        out["soil_dielectric_constant"] = u16be(data, 4) / 10
        out["soil_moisture_raw"] = float(u16be(data, 6))
        out["soil_conductivity_raw"] = float(u16be(data, 8))
    else:
        out["soil_moisture"] = u16be(data, 4) / 100
        out["soil_temperature"] = s16be(data, 6) / 100
        out["soil_conductivity"] = float(u16be(data, 8))
    return out


@hookimpl
def lora_gateway_decode(uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
    if codec != CODEC:
        return None
    return decode_lse01(uplink.payload, uplink.f_port)


@hookimpl
def lora_gateway_codecs() -> list[str]:
    return [CODEC]

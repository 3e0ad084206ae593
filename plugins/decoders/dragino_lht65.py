"""Decoder ``dragino_lht65``: Dragino LHT65 temperature/humidity sensor, fPort 2, 11 bytes.

Layout (TTN device repository lht65.js, big-endian):
bytes 0-1 battery (bits 15-14 status, bits 13-0 mV), 2-3 built-in SHT20 temperature
(int16 /100 degC), 4-5 humidity ((u16 & 0x0FFF) /10 %RH), 6 external sensor byte
(bits 3-0 type, bit 6 poll-message flag, bit 7 "sensor not connected"), 7-10 external value.

Fields (all numbers are floats):

- ``battery_v``: battery voltage, V
- ``battery_status``: 0..3 (0 very low <= 2.5 V ... 3 good >= 2.65 V)
- ``temperature``: built-in SHT20 temperature, degC
- ``humidity``: built-in SHT20 relative humidity, %RH
- ``external_sensor``: the external sensor type code (0 none, 1 DS18B20, 4 interrupt,
  5 illuminance, 6 ADC, 7 16-bit counter, 8 32-bit counter)
- ``external_connected``: bool, False when bit 7 says the probe is not connected
- type 1: ``external_temperature`` degC (int16 /100; 0x7FFF means no probe: omitted)
- type 4: ``interrupt_level`` (0/1), ``interrupt_triggered`` (bool)
- type 5: ``illuminance`` lux; type 6: ``adc_v`` V; types 7 and 8: ``count``

Contract: ``decode_lht65(data, f_port=None) -> dict`` raises DecodeError: ``bad_length``
(not 11 bytes), ``unsupported_f_port`` (a port other than 2), ``poll_message`` (a datalog
poll reply, bit 6: its layout differs), ``unsupported_external_sensor`` (types 9, 15 and
others whose layout differs). Only decodes when the profile names ``dragino_lht65``;
auto mode returns None (a vendor layout cannot be recognised reliably).
"""

from __future__ import annotations

from typing import Any

from gateway.hookspecs import hookimpl
from gateway.types import RawUplink
from plugins.decoders._common import fail, s16be, u16be

CODEC = "dragino_lht65"
F_PORT = 2


def decode_lht65(data: bytes, f_port: int | None = None) -> dict[str, Any]:
    """Decode one LHT65 sensor uplink; see the module docstring for fields and errors."""
    if f_port is not None and f_port != F_PORT:
        raise fail("unsupported_f_port", str(f_port))
    if len(data) != 11:
        raise fail("bad_length", f"{len(data)} bytes, expected 11")
    ext = data[6]
    if ext & 0x40:
        raise fail("poll_message")
    ext_type = ext & 0x0F
    out: dict[str, Any] = {
        "battery_v": (u16be(data, 0) & 0x3FFF) / 1000,
        "battery_status": float(data[0] >> 6),
        "temperature": s16be(data, 2) / 100,
        "humidity": (u16be(data, 4) & 0x0FFF) / 10,
        "external_sensor": float(ext_type),
        "external_connected": not bool(ext & 0x80),
    }
    if ext_type == 0:
        pass
    elif ext_type == 1:
        raw = s16be(data, 7)
        if raw != 0x7FFF and not ext & 0x80:
            out["external_temperature"] = raw / 100
    elif ext_type == 4:
        out["interrupt_level"] = float(1 if data[7] else 0)
        out["interrupt_triggered"] = bool(data[8])
    elif ext_type == 5:
        out["illuminance"] = float(u16be(data, 7))
    elif ext_type == 6:
        out["adc_v"] = u16be(data, 7) / 1000
    elif ext_type == 7:
        out["count"] = float(u16be(data, 7))
    elif ext_type == 8:
        out["count"] = float(int.from_bytes(data[7:11], "big"))
    else:
        raise fail("unsupported_external_sensor", str(ext_type))
    return out


@hookimpl
def lora_gateway_decode(uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
    if codec != CODEC:
        return None
    return decode_lht65(uplink.payload, uplink.f_port)


@hookimpl
def lora_gateway_codecs() -> list[str]:
    return [CODEC]

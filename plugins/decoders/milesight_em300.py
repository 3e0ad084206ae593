"""Decoder ``milesight_em300``: Milesight EM300-TH temperature/humidity sensor (fPort 85).

TLV records ``[channel id][channel type][value]``, values LITTLE-endian (this is not
Cayenne LPP even though the type bytes 0x67/0x68 look like LPP's):

=======  ====  ======  ==================================================
channel  type  length  field
=======  ====  ======  ==================================================
0x01     0x75  1       ``battery``: %, uint8
0x03     0x67  2       ``temperature``: degC, int16 LE /10
0x04     0x68  1       ``humidity``: %RH, uint8 /2
0x20     0xCE  8       history record: skipped (timestamp, temperature, humidity, status)
=======  ====  ======  ==================================================

All values are floats. Like Milesight's own decoder, decoding stops at the first record it
does not know (e.g. the 0xFF device-information records sent after a join), keeping what
came before it; a record cut short raises ``DecodeError("truncated")`` and a payload with
no known record raises ``no_known_records``.

Contract: ``decode_em300_th(data) -> dict[str, float]``. Only decodes when the profile
names ``milesight_em300``.
"""

from __future__ import annotations

from typing import Any

from gateway.hookspecs import hookimpl
from gateway.types import RawUplink
from plugins.decoders._common import fail

CODEC = "milesight_em300"

# (channel id, channel type) -> (field or None to skip, length)
_RECORDS: dict[tuple[int, int], tuple[str | None, int]] = {
    (0x01, 0x75): ("battery", 1),
    (0x03, 0x67): ("temperature", 2),
    (0x04, 0x68): ("humidity", 1),
    (0x20, 0xCE): (None, 8),
}


def decode_em300_th(data: bytes) -> dict[str, float]:
    """Decode EM300-TH TLV records; see the module docstring."""
    out: dict[str, float] = {}
    i, n = 0, len(data)
    seen = False
    while i + 2 <= n:
        record = _RECORDS.get((data[i], data[i + 1]))
        if record is None:
            break
        field, length = record
        start = i + 2
        if start + length > n:
            raise fail("truncated", f"record 0x{data[i]:02x} 0x{data[i + 1]:02x} at byte {i}")
        raw = data[start:start + length]
        if field == "temperature":
            out[field] = int.from_bytes(raw, "little", signed=True) / 10
        elif field == "humidity":
            out[field] = raw[0] / 2
        elif field == "battery":
            out[field] = float(raw[0])
        seen = True
        i = start + length
    if not seen:
        raise fail("no_known_records")
    return out


@hookimpl
def lora_gateway_decode(uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
    if codec != CODEC:
        return None
    return decode_em300_th(uplink.payload)


@hookimpl
def lora_gateway_codecs() -> list[str]:
    return [CODEC]

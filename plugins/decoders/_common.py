"""Helpers shared by the built-in decoder plugins (not a plugin itself).

``DecodeError`` messages follow one convention: ``"<reason>"`` or ``"<reason>: <detail>"``,
where ``reason`` is a short snake_case code fit for a metrics label
(see ``gateway.ingest.decoding.reason_of``).
"""

from __future__ import annotations

from gateway.types import DecodeError


def fail(reason: str, detail: str = "") -> DecodeError:
    """Return (not raise) a DecodeError carrying ``reason`` and an optional detail."""
    return DecodeError(f"{reason}: {detail}" if detail else reason)


def u16be(data: bytes, i: int) -> int:
    return (data[i] << 8) | data[i + 1]


def s16be(data: bytes, i: int) -> int:
    v = u16be(data, i)
    return v - 0x10000 if v & 0x8000 else v


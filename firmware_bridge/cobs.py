"""Consistent Overhead Byte Stuffing (COBS): frames with no 0x00 byte inside.

On the wire every frame is ``0x00 + cobs_encode(raw) + 0x00``; the leading delimiter
flushes any garbage the receiver holds, so a frame after a burst of noise is never lost.
"""

from __future__ import annotations


class CobsError(ValueError):
    """Not a valid COBS block; ``truncated`` is True when a code byte ran past the end."""

    def __init__(self, message: str, truncated: bool) -> None:
        super().__init__(message)
        self.truncated = truncated


def cobs_encode(data: bytes) -> bytes:
    """Encode ``data`` (any bytes) into a block containing no zero byte."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out.append(255)
            out += block
            block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


def cobs_decode(block: bytes) -> bytes:
    """Decode one COBS block (without delimiters). Raises CobsError when invalid."""
    out = bytearray()
    i = 0
    n = len(block)
    while i < n:
        code = block[i]
        if code == 0:
            raise CobsError("zero byte inside a COBS block", truncated=False)
        end = i + code
        if end > n:
            raise CobsError("COBS block ends inside a run", truncated=True)
        out += block[i + 1 : end]
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)

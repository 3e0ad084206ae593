"""CRCs used on the serial link.

``crc32`` is CRC-32/ISO-HDLC (the zlib/Ethernet CRC: poly 0x04C11DB7 reflected, init and
xor-out 0xFFFFFFFF; check value of b"123456789" is 0xCBF43926). It protects bridge frames.
``crc16_ccitt`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, check
value 0x29B1), kept for modules and tools that use it. Both take bytes and return an int.
"""

from __future__ import annotations

import zlib


def crc32(data: bytes, value: int = 0) -> int:
    """CRC-32/ISO-HDLC of ``data``, continuing from ``value`` (0 to start)."""
    return zlib.crc32(data, value) & 0xFFFFFFFF


def crc32_reference(data: bytes) -> int:
    """Bitwise CRC-32/ISO-HDLC, the same algorithm as the C codec (for cross-checks)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def crc16_ccitt(data: bytes, value: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` starting from ``value``."""
    crc = value
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc

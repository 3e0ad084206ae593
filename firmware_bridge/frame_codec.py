"""The bridge-board frame protocol: COBS-framed, CRC-32-protected binary frames.

Raw frame (all integers big-endian), before COBS stuffing::

    off  size  field
    0    1     version            (VERSION = 1)
    1    1     type               (FrameType)
    2    2     sequence number    (wraps at 65536)
    4    2     body length L      (0..MAX_BODY)
    6    L     body
    6+L  4     CRC-32/ISO-HDLC of bytes 0 .. 6+L-1

Uplink body (type UPLINK, board -> host)::

    0  2  RSSI in 0.1 dBm (signed)     2  2  SNR in 0.1 dB (signed)
    4  1  spreading factor            5  4  frequency in Hz
    9  4  sender address              13 .. payload (0..255 bytes)

Command bodies (host -> board): PING empty, SET_FREQUENCY u32 Hz, SET_SPREADING_FACTOR
u8, SET_BANDWIDTH u32 Hz. The board answers every command with type ``0x80 | type``,
the same sequence number and a one-byte Status.

On the wire a frame is ``00 cobs(raw) 00``. FrameDecoder splits the stream on 0x00, so
it resynchronises after any garbage, and gives every non-empty chunk exactly one
outcome: a good frame ("ok") or a reject reason. The same layout is implemented in C in
``firmware/bridge_codec.c``; ``vectors/*.hex`` hold the shared test vectors.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from enum import IntEnum

from firmware_bridge.cobs import CobsError, cobs_decode, cobs_encode
from firmware_bridge.crc import crc32

VERSION = 1
HEADER = struct.Struct(">BBHH")
UPLINK_HEAD = struct.Struct(">hhBII")
MAX_PAYLOAD = 255
MAX_BODY = UPLINK_HEAD.size + MAX_PAYLOAD
MIN_RAW = HEADER.size + 4
MAX_RAW = HEADER.size + MAX_BODY + 4
MAX_CHUNK = MAX_RAW + MAX_RAW // 254 + 1
REJECT_REASONS = ("crc", "truncated", "oversized", "garbage", "version", "length", "malformed")


class FrameType(IntEnum):
    UPLINK = 0x01
    PING = 0x10
    SET_FREQUENCY = 0x11
    SET_SPREADING_FACTOR = 0x12
    SET_BANDWIDTH = 0x13
    REPLY = 0x80  # OR-ed with the command's type


class Status(IntEnum):
    OK = 0
    BAD_PARAM = 1
    BUSY = 2
    RADIO_ERROR = 3
    UNKNOWN_COMMAND = 4


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; ``body`` is the type-specific bytes, CRC already checked."""

    type: int
    seq: int
    body: bytes
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class RadioUplink:
    """A packet the bridge board received: sender address, payload and radio metadata."""

    address: int
    payload: bytes
    rssi_dbm: float
    snr_db: float
    spreading_factor: int
    frequency_hz: int


def encode_raw(frame: Frame) -> bytes:
    """The raw (unstuffed) bytes of ``frame``, CRC appended. Raises ValueError if too big."""
    if len(frame.body) > MAX_BODY:
        raise ValueError(f"frame body of {len(frame.body)} bytes exceeds {MAX_BODY}")
    head = HEADER.pack(frame.version, frame.type, frame.seq & 0xFFFF, len(frame.body)) + frame.body
    return head + crc32(head).to_bytes(4, "big")


def encode_frame(frame: Frame) -> bytes:
    """Wire bytes of ``frame``: ``00 cobs(raw) 00``."""
    return b"\x00" + cobs_encode(encode_raw(frame)) + b"\x00"


def uplink_body(uplink: RadioUplink) -> bytes:
    """The UPLINK body for ``uplink``; RSSI/SNR are rounded to 0.1. ValueError if out of range."""
    if len(uplink.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(uplink.payload)} bytes exceeds {MAX_PAYLOAD}")
    return UPLINK_HEAD.pack(
        round(uplink.rssi_dbm * 10), round(uplink.snr_db * 10), uplink.spreading_factor,
        uplink.frequency_hz, uplink.address,
    ) + uplink.payload


def parse_uplink(body: bytes) -> RadioUplink:
    """Inverse of uplink_body. Raises ValueError when the body is too short or too long."""
    if not UPLINK_HEAD.size <= len(body) <= MAX_BODY:
        raise ValueError(f"uplink body of {len(body)} bytes")
    rssi, snr, sf, freq, address = UPLINK_HEAD.unpack_from(body)
    return RadioUplink(address, bytes(body[UPLINK_HEAD.size:]), rssi / 10, snr / 10, sf, freq)


def encode_uplink(seq: int, uplink: RadioUplink) -> bytes:
    """Wire bytes of an UPLINK frame."""
    return encode_frame(Frame(FrameType.UPLINK, seq, uplink_body(uplink)))


def classify(chunk: bytes) -> Frame | str:
    """Decode one delimiter-free chunk: a Frame, or the reject reason (see REJECT_REASONS)."""
    if len(chunk) > MAX_CHUNK:
        return "oversized"
    looks_like_frame = len(chunk) >= 2 and chunk[0] >= 2 and chunk[1] == VERSION
    try:
        raw = cobs_decode(chunk)
    except CobsError:
        return "truncated" if looks_like_frame else "garbage"
    if len(raw) < MIN_RAW:
        return "truncated" if looks_like_frame else "garbage"
    version, ftype, seq, length = HEADER.unpack_from(raw)
    expected = HEADER.size + length + 4
    if crc32(raw[:-4]) != int.from_bytes(raw[-4:], "big"):
        if version != VERSION:
            return "garbage"
        return "truncated" if expected > len(raw) else "crc"
    if version != VERSION:
        return "version"
    if expected != len(raw) or length > MAX_BODY:
        return "length"
    body = raw[HEADER.size:-4]
    if ftype == FrameType.UPLINK and not UPLINK_HEAD.size <= len(body) <= MAX_BODY:
        return "malformed"
    return Frame(ftype, seq, body, version)


class FrameDecoder:
    """Incremental decoder: ``feed`` any bytes, get the complete good frames back.

    Never blocks and never raises on input: a partial frame stays buffered (at most
    MAX_CHUNK bytes; a longer chunk is counted "oversized" once and skipped up to the
    next delimiter). ``counts`` maps "ok" and each reject reason to how many chunks had
    that outcome; every non-empty chunk between two 0x00 bytes has exactly one.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False
        self.counts: Counter[str] = Counter()

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        start = 0
        while start <= len(data):
            zero = data.find(0, start)
            piece = data[start:] if zero < 0 else data[start:zero]
            if not self._skipping:
                self._buf += piece
                if len(self._buf) > MAX_CHUNK:
                    self.counts["oversized"] += 1
                    self._buf.clear()
                    self._skipping = True
            if zero < 0:
                break
            if self._skipping:
                self._skipping = False
            elif self._buf:
                result = classify(bytes(self._buf))
                self._buf.clear()
                if isinstance(result, Frame):
                    self.counts["ok"] += 1
                    frames.append(result)
                else:
                    self.counts[result] += 1
            start = zero + 1
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete chunk held now."""
        return len(self._buf)

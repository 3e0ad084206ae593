"""The bridge frame codec: shared vectors, CRC/COBS properties, and fuzzed byte streams."""

from __future__ import annotations

import random
import zlib
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.cobs import cobs_decode, cobs_encode
from firmware_bridge.crc import crc16_ccitt, crc32, crc32_reference
from firmware_bridge.frame_codec import (
    MAX_CHUNK,
    Frame,
    FrameDecoder,
    FrameType,
    RadioUplink,
    encode_frame,
    encode_uplink,
    parse_uplink,
    uplink_body,
)
from firmware_bridge.shared_vectors import VECTOR_DIR, build_vectors, load_vectors


def decode_stream(data: bytes, split_at: list[int] | None = None) -> tuple[list[Frame], FrameDecoder]:
    dec = FrameDecoder()
    frames: list[Frame] = []
    cuts = sorted({0, len(data), *(split_at or [])})
    for a, b in pairwise(cuts):
        frames += dec.feed(data[a:b])
    frames += dec.feed(b"\x00")  # flush a last unterminated chunk
    return frames, dec


def chunks(data: bytes) -> int:
    return sum(1 for part in (data + b"\x00").split(b"\x00") if part)


def test_crc_check_values() -> None:
    assert crc32(b"123456789") == 0xCBF43926 == crc32_reference(b"123456789")
    assert crc16_ccitt(b"123456789") == 0x29B1


@given(st.binary(max_size=300))
def test_crc32_matches_bitwise_reference(data: bytes) -> None:
    assert crc32(data) == crc32_reference(data) == zlib.crc32(data)


@given(st.binary(max_size=1200))
def test_cobs_round_trip_has_no_zero(data: bytes) -> None:
    block = cobs_encode(data)
    assert 0 not in block
    assert cobs_decode(block) == data


def test_committed_vectors_are_what_the_generator_makes() -> None:
    on_disk = {p.name: p.read_text() for p in VECTOR_DIR.glob("*.hex")}
    assert on_disk == build_vectors()


def test_every_vector_round_trips_byte_for_byte() -> None:
    vectors = load_vectors()
    assert len(vectors) >= 16
    for name, v in vectors.items():
        wire = bytes.fromhex(v["wire"])
        frames, dec = decode_stream(wire)
        assert sum(dec.counts.values()) == 1, name
        assert dec.counts[v["expect"]] == 1, (name, dict(dec.counts))
        if v["expect"] != "ok":
            continue
        frame = Frame(int(v["type"]), int(v["seq"]), bytes.fromhex(v["body"]), int(v["version"]))
        assert encode_frame(frame) == wire, name
        assert frames == [frame], name
        if "payload" in v:
            up = parse_uplink(frame.body)
            assert up == RadioUplink(int(v["addr"]), bytes.fromhex(v["payload"]), int(v["rssi_x10"]) / 10,
                                     int(v["snr_x10"]) / 10, int(v["sf"]), int(v["freq"]))
            assert encode_uplink(frame.seq, up) == wire


def test_hand_built_frame_matches_codec() -> None:
    """Independent of the codec: header, body, zlib CRC, COBS by hand."""
    raw = bytes([1, 0x10, 0, 7, 0, 0])
    raw += zlib.crc32(raw).to_bytes(4, "big")
    # COBS by hand: raw is 01 10 | 00 | 07 | 00 | 00 | crc (4 bytes)
    expected = bytearray([3, 1, 0x10, 2, 7, 1, 5]) + raw[6:]
    assert 0 not in raw[6:]
    assert encode_frame(Frame(FrameType.PING, 7, b"")) == b"\x00" + bytes(expected) + b"\x00"


def test_partial_frame_never_blocks_and_completes_later() -> None:
    wire = encode_uplink(5, RadioUplink(3, b"\x01\x00\x02", -80.0, 7.5, 9, 868_100_000))
    dec = FrameDecoder()
    assert dec.feed(wire[:9]) == []
    assert dec.pending > 0
    frames = dec.feed(wire[9:])
    assert [parse_uplink(f.body).payload for f in frames] == [b"\x01\x00\x02"]
    assert dict(dec.counts) == {"ok": 1}


def test_oversized_chunk_is_counted_once_and_memory_stays_bounded() -> None:
    good = encode_uplink(1, RadioUplink(1, b"x", -1.0, 1.0, 7, 1))
    dec = FrameDecoder()
    for _ in range(50):
        dec.feed(b"\x55" * 997)
        assert dec.pending <= MAX_CHUNK
    frames = dec.feed(b"\x00" + good)
    assert dec.counts["oversized"] == 1 and dec.counts["ok"] == 1 and len(frames) == 1


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_random_bytes_never_raise_and_every_chunk_has_one_outcome(data: bytes, cuts: list[int]) -> None:
    _, dec = decode_stream(data, cuts)
    assert sum(dec.counts.values()) == chunks(data)


uplinks = st.builds(
    RadioUplink,
    address=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=255),
    rssi_dbm=st.integers(-1400, 0).map(lambda v: v / 10),
    snr_db=st.integers(-300, 300).map(lambda v: v / 10),
    spreading_factor=st.integers(5, 12),
    frequency_hz=st.integers(0, 2**32 - 1),
)
mutations = st.sampled_from(["none", "none", "bitflip", "truncate", "garbage_before", "no_trailing_zero"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(uplinks, mutations, st.integers(0, 10**6)), min_size=1, max_size=25),
       st.lists(st.integers(0, 8000), max_size=10))
def test_good_frames_between_bad_ones_are_all_recovered(items: list, cuts: list[int]) -> None:
    stream = bytearray()
    good: list[Frame] = []
    for seq, (up, mutation, r) in enumerate(items):
        wire = bytearray(encode_uplink(seq, up))
        rng = random.Random(r)
        if mutation == "bitflip":
            pos = rng.randrange(1, len(wire) - 1)
            wire[pos] ^= 1 << rng.randrange(8)
        elif mutation == "truncate":
            wire = wire[: rng.randrange(2, len(wire) - 1)]
        elif mutation == "garbage_before":
            stream += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        elif mutation == "no_trailing_zero":  # the next frame's leading 0x00 still ends it
            wire = wire[:-1]
        next_garbage = seq + 1 < len(items) and items[seq + 1][1] == "garbage_before"
        if mutation in ("none", "garbage_before") or (mutation == "no_trailing_zero" and not next_garbage):
            good.append(Frame(FrameType.UPLINK, seq, uplink_body(up)))
        stream += wire
    frames, dec = decode_stream(bytes(stream), cuts)
    assert frames == good
    assert dec.counts["ok"] == len(frames)
    assert sum(dec.counts.values()) == chunks(bytes(stream))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(uplinks, st.sampled_from(["none", "bitflip", "truncate", "garbage"]),
                          st.integers(0, 10**6)), min_size=1, max_size=25))
def test_counts_add_up_good_plus_rejected_by_reason_equals_sent(items: list) -> None:
    """Damage that creates no 0x00 byte: every sent frame and every burst has one outcome."""
    stream = bytearray()
    sent = bursts = damaged = 0
    good: list[Frame] = []
    for seq, (up, mutation, r) in enumerate(items):
        rng = random.Random(r)
        wire = bytearray(encode_uplink(seq, up))
        if mutation == "bitflip":
            pos = rng.randrange(1, len(wire) - 1)
            bits = [b for b in range(8) if wire[pos] ^ (1 << b)]  # never make a 0x00
            wire[pos] ^= 1 << rng.choice(bits)
            damaged += 1
        elif mutation == "truncate":  # bytes lost before the closing delimiter (a UART overrun)
            wire = wire[: rng.randrange(2, len(wire) - 1)] + b"\x00"
            damaged += 1
        elif mutation == "garbage":  # a burst of noise without zeros before the frame
            stream += bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 100)))
            bursts += 1
        if mutation in ("none", "garbage"):
            good.append(Frame(FrameType.UPLINK, seq, uplink_body(up)))
        stream += wire
        sent += 1
    frames, dec = decode_stream(bytes(stream))
    rejected = sum(v for k, v in dec.counts.items() if k != "ok")
    assert frames == good
    assert dec.counts["ok"] + rejected == sent + bursts
    assert rejected == damaged + bursts

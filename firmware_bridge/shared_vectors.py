"""The shared test vectors of the bridge frame codec (``vectors/*.hex``).

Each ``.hex`` file is ``key=value`` lines (``#`` starts a comment). Every vector has
``wire`` (the bytes on the serial line, hex) and ``expect`` ("ok" or a reject reason).
Good vectors also have ``version``, ``type``, ``seq`` and ``body`` (hex); UPLINK ones add
``rssi_x10``, ``snr_x10``, ``sf``, ``freq``, ``addr`` and ``payload`` (hex). A decoder is
fed ``wire`` then one more 0x00 (which ends a chunk cut short) and must report exactly
one outcome, ``expect``. The Python
codec (tests/test_frame_codec.py) and the C codec (firmware/test_bridge_codec.c) must
both reproduce every file byte for byte. ``python -m firmware_bridge.shared_vectors DIR``
rewrites them; a test checks the committed files equal what this module generates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from firmware_bridge.cobs import cobs_encode
from firmware_bridge.crc import crc32
from firmware_bridge.frame_codec import (
    HEADER,
    Frame,
    FrameType,
    RadioUplink,
    Status,
    encode_frame,
    encode_raw,
    uplink_body,
)

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
LPP = bytes.fromhex("0167011002688a0302fbe80474016f")


def _good(name: str, note: str, frame: Frame, uplink: RadioUplink | None = None) -> tuple[str, str]:
    lines = [f"# {note}", f"version={frame.version}", f"type={frame.type}", f"seq={frame.seq}",
             f"body={frame.body.hex()}"]
    if uplink is not None:
        lines += [f"rssi_x10={round(uplink.rssi_dbm * 10)}", f"snr_x10={round(uplink.snr_db * 10)}",
                  f"sf={uplink.spreading_factor}", f"freq={uplink.frequency_hz}",
                  f"addr={uplink.address}", f"payload={uplink.payload.hex()}"]
    lines += [f"wire={encode_frame(frame).hex()}", "expect=ok"]
    return name, "\n".join(lines) + "\n"


def _bad(name: str, note: str, wire: bytes, expect: str) -> tuple[str, str]:
    return name, f"# {note}\nwire={wire.hex()}\nexpect={expect}\n"


def _raw_with_crc(head: bytes) -> bytes:
    return head + crc32(head).to_bytes(4, "big")


def build_vectors() -> dict[str, str]:
    """File name -> file text of every vector."""
    out: list[tuple[str, str]] = []
    ups = [
        ("uplink_hello", "REYAX guide example as a bridge uplink", 1,
         RadioUplink(50, b"HELLO", -99.0, 4.0, 9, 868_100_000)),
        ("uplink_lpp", "Cayenne LPP payload with zero bytes; sequence at its maximum", 65535,
         RadioUplink(7, LPP, -112.5, -7.5, 12, 868_300_000)),
        ("uplink_empty", "empty payload, address at its maximum", 0,
         RadioUplink(0xFFFFFFFF, b"", -30.0, 12.25, 7, 915_000_000)),
        ("uplink_max", "255-byte payload: a 254-byte run without zeros, then zeros", 4660,
         RadioUplink(1, bytes((i % 255) + 1 for i in range(254)) + b"\x00", -120.0, -20.0, 10, 433_175_000)),
    ]
    for name, note, seq, up in ups:
        up = RadioUplink(up.address, up.payload, round(up.rssi_dbm * 10) / 10, round(up.snr_db * 10) / 10,
                         up.spreading_factor, up.frequency_hz)
        out.append(_good(name, note, Frame(FrameType.UPLINK, seq, uplink_body(up)), up))
    out.append(_good("cmd_ping", "PING command", Frame(FrameType.PING, 7, b"")))
    out.append(_good("cmd_set_frequency", "SET_FREQUENCY 868.3 MHz",
                     Frame(FrameType.SET_FREQUENCY, 8, (868_300_000).to_bytes(4, "big"))))
    out.append(_good("cmd_set_sf", "SET_SPREADING_FACTOR 12", Frame(FrameType.SET_SPREADING_FACTOR, 9, b"\x0c")))
    out.append(_good("reply_ok", "reply to PING: OK", Frame(FrameType.REPLY | FrameType.PING, 7, bytes([Status.OK]))))
    out.append(_good("reply_bad_param", "reply to SET_SPREADING_FACTOR: BAD_PARAM",
                     Frame(FrameType.REPLY | FrameType.SET_SPREADING_FACTOR, 9, bytes([Status.BAD_PARAM]))))

    hello = Frame(FrameType.UPLINK, 1, uplink_body(ups[0][3]))
    raw = bytearray(encode_raw(hello))
    raw[HEADER.size + 14] ^= 0x04  # one bit of the payload
    out.append(_bad("bad_crc", "one payload bit flipped, stuffing intact", b"\x00" + cobs_encode(bytes(raw)) + b"\x00", "crc"))
    wire = encode_frame(hello)
    out.append(_bad("bad_truncated", "last 5 bytes and the closing delimiter lost", wire[:-6], "truncated"))
    out.append(_bad("bad_version", "version 2 with a valid CRC",
                    b"\x00" + cobs_encode(_raw_with_crc(HEADER.pack(2, 1, 3, 0))) + b"\x00", "version"))
    out.append(_bad("bad_length", "declared body length 4, actual 2, valid CRC",
                    b"\x00" + cobs_encode(_raw_with_crc(HEADER.pack(1, 0x10, 3, 4) + b"ab")) + b"\x00", "length"))
    out.append(_bad("bad_malformed", "UPLINK with a 5-byte body, valid CRC",
                    b"\x00" + cobs_encode(_raw_with_crc(HEADER.pack(1, 1, 3, 5) + b"12345")) + b"\x00", "malformed"))
    out.append(_bad("bad_garbage", "printable noise between delimiters", b"\x00hello world\x00", "garbage"))
    out.append(_bad("bad_oversized", "300 bytes without a delimiter", b"\x00" + b"A" * 300 + b"\x00", "oversized"))
    return {f"{name}.hex": text for name, text in out}


def load_vectors(directory: Path = VECTOR_DIR) -> dict[str, dict[str, str]]:
    """Parse every ``*.hex`` file of ``directory`` into ``{file name: {key: value}}``."""
    result: dict[str, dict[str, str]] = {}
    for path in sorted(directory.glob("*.hex")):
        fields: dict[str, str] = {}
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                fields[key.strip()] = value.strip()
        result[path.name] = fields
    return result


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else VECTOR_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in build_vectors().items():
        (directory / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

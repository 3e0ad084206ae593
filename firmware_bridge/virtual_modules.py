"""Virtual radio modules for the simulator: what each module prints when a packet arrives
(``render``) and how it answers commands (``feed`` host bytes, get reply bytes back).

They follow the replies recorded in ../shared/formats. Where a module's documentation
does not say which error a bad value gives, the choice is marked "simulator's choice".
"""

from __future__ import annotations

import re
from typing import Protocol

from firmware_bridge.frame_codec import (
    Frame,
    FrameDecoder,
    FrameType,
    RadioUplink,
    Status,
    encode_frame,
    encode_uplink,
)


class VirtualModule(Protocol):
    protocol: str

    def render(self, address: int, seq: int, payload: bytes, rssi: float, snr: float) -> bytes:
        """Bytes the module prints for one received packet."""

    def feed(self, data: bytes) -> bytes:
        """Bytes from the host; returns the module's replies (possibly empty)."""


class _LineInput:
    def __init__(self) -> None:
        self._buf = bytearray()

    def lines(self, data: bytes) -> list[str]:
        self._buf += data
        out = []
        while (nl := self._buf.find(b"\n")) >= 0:
            out.append(self._buf[:nl].decode("ascii", "replace").strip())
            del self._buf[: nl + 1]
        if len(self._buf) > 1024:
            self._buf.clear()
        return [line for line in out if line]


class VirtualBridge:
    """The bridge board (firmware/bridge_board.ino) as frames."""

    protocol = "bridge"

    def __init__(self, frequency_hz: int = 868_100_000, spreading_factor: int = 9) -> None:
        self.frequency_hz = frequency_hz
        self.spreading_factor = spreading_factor
        self.bandwidth_hz = 125_000
        self._decoder = FrameDecoder()

    def render(self, address: int, seq: int, payload: bytes, rssi: float, snr: float) -> bytes:
        return encode_uplink(seq, RadioUplink(address, payload, rssi, snr, self.spreading_factor, self.frequency_hz))

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for frame in self._decoder.feed(data):
            status = self._apply(frame)
            out += encode_frame(Frame(FrameType.REPLY | frame.type, frame.seq, bytes([status])))
        return bytes(out)

    def _apply(self, frame: Frame) -> int:
        body = frame.body
        if frame.type == FrameType.PING:
            return Status.OK
        if frame.type == FrameType.SET_FREQUENCY and len(body) == 4:
            hz = int.from_bytes(body, "big")
            if not 137_000_000 <= hz <= 1_020_000_000:
                return Status.BAD_PARAM
            self.frequency_hz = hz
            return Status.OK
        if frame.type == FrameType.SET_SPREADING_FACTOR and len(body) == 1:
            if not 5 <= body[0] <= 12:
                return Status.BAD_PARAM
            self.spreading_factor = body[0]
            return Status.OK
        if frame.type == FrameType.SET_BANDWIDTH and len(body) == 4:
            hz = int.from_bytes(body, "big")
            if hz not in (62_500, 125_000, 250_000, 500_000):
                return Status.BAD_PARAM
            self.bandwidth_hz = hz
            return Status.OK
        return Status.UNKNOWN_COMMAND if frame.type < FrameType.REPLY else Status.BAD_PARAM


class VirtualReyax:
    """RYLR896/RYLR998: ``+RCV=`` lines, ``+OK`` / ``+ERR=<n>`` replies."""

    protocol = "reyax"

    def __init__(self) -> None:
        self.address = 0
        self.band = 915_000_000
        self.parameter = (9, 7, 1, 12)
        self._input = _LineInput()

    def render(self, address: int, seq: int, payload: bytes, rssi: float, snr: float) -> bytes:
        return b"+RCV=%d,%d," % (address, len(payload)) + payload + b",%d,%d\r\n" % (round(rssi), round(snr))

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._answer(line).encode() + b"\r\n" for line in self._input.lines(data))

    def _answer(self, line: str) -> str:
        if not line.startswith("AT"):
            return "+ERR=2"
        if line == "AT":
            return "+OK"
        if m := re.fullmatch(r"AT\+BAND=(\d+)", line):
            hz = int(m.group(1))
            if not 433_000_000 <= hz <= 960_000_000:
                return "+ERR=15"  # simulator's choice
            self.band = hz
            return "+OK"
        if m := re.fullmatch(r"AT\+PARAMETER=(\d+),(\d+),(\d+),(\d+)", line):
            sf, bw, cr, pre = (int(g) for g in m.groups())
            if pre != 12 and not 4 <= pre <= 25:
                return "+ERR=18"
            if not (5 <= sf <= 12 and 0 <= bw <= 9 and 1 <= cr <= 4):
                return "+ERR=15"  # simulator's choice
            self.parameter = (sf, bw, cr, pre)
            return "+OK"
        if m := re.fullmatch(r"AT\+ADDRESS=(\d+)", line):
            if int(m.group(1)) > 65535:
                return "+ERR=15"  # simulator's choice
            self.address = int(m.group(1))
            return "+OK"
        if line == "AT+ADDRESS?":
            return f"+ADDRESS={self.address}"
        if line == "AT+PARAMETER?":
            return "+PARAMETER=" + ",".join(map(str, self.parameter))
        if m := re.fullmatch(r"AT\+IPR=(\d+)", line):
            return f"+IPR={m.group(1)}"
        return "+ERR=4"


class VirtualRak3172:
    """RAK3172 RUI3 P2P: ``+EVT:RXP2P:rssi:snr:hex`` (or the old two-line form)."""

    protocol = "rak3172"

    def __init__(self, old_format: bool = False) -> None:
        self.old_format = old_format
        self.p2p = "868000000:7:125:0:8:14"
        self.mode = 0
        self._input = _LineInput()

    def render(self, address: int, seq: int, payload: bytes, rssi: float, snr: float) -> bytes:
        if self.old_format:
            return (f"+EVT:RXP2P, RSSI {round(rssi)}, SNR {round(snr)}\r\n+EVT:{payload.hex().upper()}\r\n").encode()
        return f"+EVT:RXP2P:{round(rssi)}:{round(snr)}:{payload.hex().upper()}\r\n".encode()

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._answer(line).encode() for line in self._input.lines(data))

    def _answer(self, line: str) -> str:
        if line == "AT":
            return "OK\r\n"
        if m := re.fullmatch(r"AT\+NWM=([01])", line):
            self.mode = int(m.group(1))
            return "OK\r\n"
        if line == "AT+P2P=?":
            return f"{self.p2p}\r\n\r\nOK\r\n"
        if m := re.fullmatch(r"AT\+P2P=(\d+):(\d+):(\d+):(\d):(\d+):(\d+)", line):
            hz, sf, bw = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if not (150_000_000 <= hz <= 960_000_000 and 5 <= sf <= 12 and bw in (125, 250, 500)):
                return "AT_PARAM_ERROR\r\n"
            if self.mode != 0:
                return "AT_ERROR\r\n"  # simulator's choice: P2P settings need P2P mode
            self.p2p = line.split("=", 1)[1]
            return "OK\r\n"
        if re.fullmatch(r"AT\+PRECV=\d+", line):
            return "OK\r\n"
        return "AT_ERROR\r\n"


class VirtualSeeedE5:
    """LoRa-E5 test mode: ``+TEST: LEN:..`` then ``+TEST: RX "hex"``."""

    protocol = "seeed_e5"

    def __init__(self) -> None:
        self.mode = "LWABP"
        self._input = _LineInput()

    def render(self, address: int, seq: int, payload: bytes, rssi: float, snr: float) -> bytes:
        return (f"+TEST: LEN:{len(payload)}, RSSI:{round(rssi)}, SNR:{round(snr)}\r\n"
                f'+TEST: RX "{payload.hex().upper()}"\r\n').encode()

    def feed(self, data: bytes) -> bytes:
        return b"".join(self._answer(line).encode() + b"\r\n" for line in self._input.lines(data))

    def _answer(self, line: str) -> str:
        if line == "AT":
            return "+AT: OK"
        if m := re.fullmatch(r"AT\+MODE=(\w+)", line):
            self.mode = m.group(1).upper()
            return f"+MODE: {self.mode}"
        if line.startswith("AT+TEST=") and self.mode != "TEST":
            return "+TEST: ERROR(-12)"
        if m := re.fullmatch(r"AT\+TEST=RFCFG,([\d.]+),SF(\d+),(\d+),(\d+),(\d+),(\d+),(ON|OFF),(ON|OFF),(ON|OFF)", line):
            hz = round(float(m.group(1)) * 1e6)
            sf, bw = int(m.group(2)), int(m.group(3))
            if not (7 <= sf <= 12 and bw in (125, 250, 500)):
                return "+TEST: ERROR(-1)"
            return (f"+TEST: RFCFG F:{hz}, SF{sf}, BW{bw}K, TXPR:{m.group(4)}, RXPR:{m.group(5)}, "
                    f"POW:{m.group(6)}dBm, CRC:{m.group(7)}, IQ:{m.group(8)}, NET:{m.group(9)}")
        if line.startswith("AT+TEST=RFCFG"):
            return "+TEST: ERROR(-11)"
        if line == "AT+TEST=RXLRPKT":
            return "+TEST: RXLRPKT"
        return "+AT: ERROR(-10)"


def make_virtual_module(protocol: str, **kwargs: object) -> VirtualModule:
    """A virtual module for ``protocol``; ValueError when unknown."""
    classes = {"bridge": VirtualBridge, "reyax": VirtualReyax, "rak3172": VirtualRak3172, "seeed_e5": VirtualSeeedE5}
    if protocol not in classes:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(classes)}")
    module: VirtualModule = classes[protocol](**kwargs)  # type: ignore[arg-type]
    return module

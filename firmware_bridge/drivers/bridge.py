"""Our own bridge board (firmware/bridge_board.ino): binary frames, see frame_codec.

UPLINK frames become ModuleUplink (with the frame's sequence number, spreading factor and
frequency); reply frames become BridgeReply events for commands.BridgeCommander.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from firmware_bridge.drivers.base import ModuleUplink, RadioConfig
from firmware_bridge.frame_codec import FrameDecoder, FrameType, parse_uplink

PROTOCOL = "bridge"


@dataclass(frozen=True, slots=True)
class BridgeReply:
    """A board's reply: to command ``type`` (without the 0x80 bit), its seq and status."""

    command: int
    seq: int
    status: int
    body: bytes


class BridgeDriver:
    """Frame decoder plus event mapping; ``counts`` are the decoder's per-chunk outcomes."""

    protocol = PROTOCOL
    has_address = True

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self.counts: Counter[str] = self._decoder.counts

    def feed(self, data: bytes) -> list[ModuleUplink | BridgeReply]:
        """Decode ``data``; never raises. Frames of other types count as "unexpected"."""
        events: list[ModuleUplink | BridgeReply] = []
        for frame in self._decoder.feed(data):
            if frame.type == FrameType.UPLINK:
                up = parse_uplink(frame.body)
                events.append(ModuleUplink(str(up.address), up.payload, up.rssi_dbm, up.snr_db, frame.seq,
                                           up.spreading_factor, up.frequency_hz))
            elif frame.type & FrameType.REPLY and frame.body:
                self.counts["ok"] -= 1
                self.counts["reply"] += 1
                events.append(BridgeReply(frame.type & 0x7F, frame.seq, frame.body[0], frame.body[1:]))
            else:
                self.counts["ok"] -= 1
                self.counts["unexpected"] += 1
        return events

    @staticmethod
    def validate(cfg: RadioConfig) -> None:
        """Raise ValueError for settings the board cannot take."""
        if cfg.address is not None:
            raise ValueError("the bridge board forwards every sender's address; leave 'address' unset")
        if cfg.spreading_factor is not None and not 5 <= cfg.spreading_factor <= 12:
            raise ValueError(f"spreading factor {cfg.spreading_factor} is outside 5..12")

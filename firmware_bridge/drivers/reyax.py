"""REYAX RYLR896 / RYLR406 / RYLR998 / RYLR498 (AT commands, point-to-point LoRa).

Receive line: ``+RCV=<address>,<length>,<data>,<rssi>,<snr>\\r\\n``. The data is raw
bytes and may hold commas or even CR/LF, so the parser works on bytes and takes exactly
``<length>`` bytes of data; only then it expects ``,rssi,snr`` and the line end. When
that fails but the line up to its newline ends in ``,<int>,<int>``, the data is taken
from between the head and the last two commas (counted in ``length_mismatches``): a
published example line declares 46 bytes for a 45-byte payload. Replies:
``+OK``, ``+ERR=<n>`` (named by ERROR_NAMES), ``+READY``, ``+<NAME>=<value>``.
"""

from __future__ import annotations

import re
from collections import Counter

from firmware_bridge.drivers.base import (
    MAX_LINE,
    Event,
    ModuleError,
    ModuleUplink,
    RadioConfig,
    ReplyLine,
    ascii_line,
)

PROTOCOL = "reyax"
MAX_DATA = 240
ERROR_NAMES: dict[int, str] = {
    1: "no CR LF at the end of the AT command",
    2: "the command does not start with AT",
    4: "unknown command",
    5: "the data to send does not match the given length",
    10: "TX is over times",
    12: "CRC error",
    13: "TX data exceeds 240 bytes",
    14: "failed to write flash memory",
    15: "unknown failure",
    17: "last TX was not completed",
    18: "preamble value is not allowed",
    19: "RX failed, header error",
    20: "smart receiving power saving time value is not allowed",
}
BANDWIDTH_CODES: dict[float, int] = {
    7.8: 0, 10.4: 1, 15.6: 2, 20.8: 3, 31.25: 4, 41.7: 5, 62.5: 6, 125: 7, 250: 8, 500: 9,
}
_HEAD = re.compile(rb"\+RCV=(\d{1,5}),(\d{1,3}),")
_TAIL = re.compile(rb",(-?\d{1,4}),(-?\d{1,3})\r?\n")
_TAIL_MAX = 14
_RIGHT_SPLIT = re.compile(rb"(.*),(-?\d{1,4}),(-?\d{1,3})", re.DOTALL)
_REPLY = re.compile(r"\+(OK|READY|RESET|ERR=\d+|[A-Z]+=.*)")


class ReyaxDriver:
    """Parser and command rules for REYAX modules; see the module docstring."""

    protocol = PROTOCOL
    has_address = True

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.length_mismatches = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; never raises; partial records stay buffered (bounded)."""
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def _step(self, events: list[Event]) -> bool:
        buf = self._buf
        while buf[:1] in (b"\r", b"\n"):
            del buf[:1]
        if not buf:
            return False
        rcv = buf.find(b"+RCV=")
        nl = buf.find(b"\n")
        if nl >= 0 and (rcv < 0 or nl < rcv):
            self._line(bytes(buf[:nl]).rstrip(b"\r"), events)
            del buf[: nl + 1]
            return True
        if rcv > 0:
            self.counts["garbage"] += 1  # junk without a newline before a record
            del buf[:rcv]
            return True
        if rcv < 0:
            if len(buf) > MAX_LINE:
                self.counts["oversized"] += 1
                del buf[: len(buf) - 4]
            return False
        return self._record(events)

    def _record(self, events: list[Event]) -> bool:
        buf = self._buf
        head = _HEAD.match(buf)
        if head is None:
            nl = buf.find(b"\n")
            nxt = buf.find(b"+RCV=", 1, nl if nl >= 0 else len(buf))
            if nxt < 0 and nl < 0 and len(buf) < 16:
                return False  # the head may still be arriving
            self.counts["malformed"] += 1
            del buf[: nxt if nxt >= 0 else (nl + 1) if nl >= 0 else 5]
            return True
        length = int(head.group(2))
        pos = head.end() + length
        inner = buf.find(b"+RCV=", head.end(), min(pos, len(buf)))
        if inner >= 0:
            # a record cut short (its tail lost) followed by the next one: resynchronise
            self.counts["truncated"] += 1
            del buf[:inner]
            return True
        tail = _TAIL.match(buf, pos)
        if tail is None:
            if length <= MAX_DATA and len(buf) < pos + _TAIL_MAX and b"\n" not in buf[pos:]:
                return False  # data or tail still arriving
            nl = buf.find(b"\n", head.end())
            nxt = buf.find(b"+RCV=", head.end(), nl if nl >= 0 else len(buf))
            if nxt >= 0:  # this record was cut short; the next one starts inside it
                self.counts["truncated"] += 1
                del buf[:nxt]
                return True
            fallback = _RIGHT_SPLIT.fullmatch(bytes(buf[head.end():nl]).rstrip(b"\r")) if nl >= 0 else None
            if fallback is not None and length <= MAX_DATA:
                # The declared length disagrees with the line; like REYAX's own examples'
                # consumers do, trust the last two commas (counted in length_mismatches).
                self.length_mismatches += 1
                self.counts["ok"] += 1
                events.append(ModuleUplink(str(int(head.group(1))), fallback.group(1),
                                           float(int(fallback.group(2))), float(int(fallback.group(3)))))
            else:
                self.counts["length" if length <= MAX_DATA else "malformed"] += 1
            del buf[: (nl + 1) if nl >= 0 else head.end()]
            return True
        events.append(ModuleUplink(
            address=str(int(head.group(1))), payload=bytes(buf[head.end():pos]),
            rssi_dbm=float(int(tail.group(1))), snr_db=float(int(tail.group(2))),
        ))
        self.counts["ok"] += 1
        del buf[: tail.end()]
        return True

    def _line(self, raw: bytes, events: list[Event]) -> None:
        text = ascii_line(raw)
        if text is not None and _REPLY.fullmatch(text):
            self.counts["reply"] += 1
            events.append(ReplyLine(text))
        else:
            self.counts["garbage"] += 1

    # --- commands ---------------------------------------------------------------
    @staticmethod
    def configure_commands(cfg: RadioConfig) -> list[str]:
        """AT commands that apply ``cfg`` (an ``AT`` check first). ValueError if invalid."""
        commands = ["AT"]
        if cfg.frequency_hz is not None:
            commands.append(f"AT+BAND={cfg.frequency_hz}")
        if cfg.spreading_factor is not None or cfg.bandwidth_khz is not None:
            sf = cfg.spreading_factor or 9
            bw = cfg.bandwidth_khz or 125
            if bw not in BANDWIDTH_CODES:
                raise ValueError(f"REYAX modules support bandwidths {sorted(BANDWIDTH_CODES)} kHz, not {bw}")
            if not 5 <= sf <= 12:
                raise ValueError(f"spreading factor {sf} is outside 5..12")
            commands.append(f"AT+PARAMETER={sf},{BANDWIDTH_CODES[bw]},1,12")
        if cfg.address is not None:
            if not 0 <= cfg.address <= 65535:
                raise ValueError(f"REYAX address {cfg.address} is outside 0..65535")
            commands.append(f"AT+ADDRESS={cfg.address}")
        return commands

    @staticmethod
    def is_final(command: str, line: str) -> bool:
        """True when ``line`` ends the reply to ``command``."""
        if line == "+OK" or line.startswith("+ERR="):
            return True
        if command.startswith("AT+IPR="):
            return line == "+" + command[3:]
        if command.endswith("?"):
            return line.startswith("+" + command[3:-1] + "=")
        return False

    @staticmethod
    def check_reply(command: str, lines: list[str]) -> None:
        """Raise ModuleError when the reply is an error; return when it is success."""
        last = lines[-1]
        if last.startswith("+ERR="):
            code = last[5:]
            name = ERROR_NAMES.get(int(code), "undocumented error") if code.isdigit() else "undocumented error"
            raise ModuleError(command, last, name)

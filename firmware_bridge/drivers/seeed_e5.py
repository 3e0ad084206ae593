"""Seeed LoRa-E5 / Wio-E5 (STM32WLE5, Seeed AT firmware) in TEST (P2P) mode.

Receive, two lines: ``+TEST: LEN:<n>, RSSI:<rssi>, SNR:<snr>`` then ``+TEST: RX "<hex>"``.
Replies are ``+<CMD>: ...`` lines; errors are ``+<CMD>: ERROR(<n>)`` (named by
ERROR_NAMES). Packets carry no sender address (``has_address`` is False).
"""

from __future__ import annotations

import re
from collections import Counter

from firmware_bridge.drivers.base import (
    Event,
    LineSplitter,
    ModuleError,
    ModuleUplink,
    RadioConfig,
    ReplyLine,
    TwoLineRecordParser,
    parse_hex,
)

PROTOCOL = "seeed_e5"
ERROR_NAMES: dict[int, str] = {
    -1: "parameter is invalid",
    -10: "command unknown",
    -11: "command is in wrong format",
    -12: "command is unavailable in current mode",
    -20: "too many parameters",
    -21: "command too long",
    -22: "receive end symbol timeout",
    -23: "invalid character received",
    -24: "command too long, end symbol timeout or invalid character",
}
_LEN = re.compile(r"\+TEST: LEN:(\d+), RSSI:(-?\d+), SNR:(-?\d+)")
_RX = re.compile(r'\+TEST: RX "([^"]*)"')
_REPLY = re.compile(r"\+[A-Z]+: .*")
_ERROR = re.compile(r"\+([A-Z]+): ERROR\((-?\d+)\)")
_RFCFG = re.compile(r"\+TEST: RFCFG F:(\d+), SF(\d+), BW(\d+)K")


class SeeedE5Driver(TwoLineRecordParser):
    """Parser and command rules for the LoRa-E5 test mode; see the module docstring."""

    protocol = PROTOCOL
    has_address = False

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lines = LineSplitter(self.counts, (b"+TEST: ",))
        self._pending: tuple[int, float, float] | None = None

    def _parse(self, text: str, events: list[Event]) -> None:
        rx = _RX.fullmatch(text)
        if rx:
            if self._pending is None:
                self.counts["orphan"] += 1
                return
            length, rssi, snr = self._pending
            self._pending = None
            self.counts["pair"] += 1
            payload = parse_hex(rx.group(1))
            if payload is None:
                self.counts["hex"] += 1
            elif len(payload) != length:
                self.counts["length"] += 1
            else:
                self.counts["ok"] += 1
                events.append(ModuleUplink(None, payload, rssi, snr))
            return
        self._drop_pending()
        head = _LEN.fullmatch(text)
        if head:
            self._pending = (int(head.group(1)), float(head.group(2)), float(head.group(3)))
        elif text.startswith(("+TEST: LEN", '+TEST: RX "')):
            self.counts["malformed"] += 1
        elif _REPLY.fullmatch(text):
            self.counts["reply"] += 1
            events.append(ReplyLine(text))
        else:
            self.counts["garbage"] += 1

    # --- commands ---------------------------------------------------------------
    @staticmethod
    def configure_commands(cfg: RadioConfig) -> list[str]:
        """AT commands for ``cfg``: TEST mode, RF configuration, continuous receive."""
        if cfg.address is not None:
            raise ValueError("LoRa-E5 test-mode packets carry no address; leave 'address' unset")
        commands = ["AT", "AT+MODE=TEST"]
        if cfg.frequency_hz is not None or cfg.spreading_factor is not None or cfg.bandwidth_khz is not None:
            bw = cfg.bandwidth_khz or 125
            if bw not in (125, 250, 500):
                raise ValueError(f"LoRa-E5 bandwidth must be 125, 250 or 500 kHz, not {bw}")
            sf = cfg.spreading_factor or 7
            if not 7 <= sf <= 12:
                raise ValueError(f"spreading factor {sf} is outside 7..12")
            mhz = f"{(cfg.frequency_hz or 868_000_000) / 1e6:.6f}".rstrip("0").rstrip(".")
            commands.append(f"AT+TEST=RFCFG,{mhz},SF{sf},{int(bw)},12,15,14,ON,OFF,OFF")
        commands.append("AT+TEST=RXLRPKT")
        return commands

    @staticmethod
    def is_final(command: str, line: str) -> bool:
        word = "AT" if command == "AT" else command[3:].split("=", 1)[0].split("?", 1)[0]
        return line.startswith(f"+{word}:")

    @staticmethod
    def check_reply(command: str, lines: list[str]) -> None:
        last = lines[-1]
        err = _ERROR.fullmatch(last)
        if err:
            code = int(err.group(2))
            raise ModuleError(command, last, ERROR_NAMES.get(code, "undocumented error"))
        if command == "AT+MODE=TEST" and last != "+MODE: TEST":
            raise ModuleError(command, last, "module did not enter TEST mode")
        if command.startswith("AT+TEST=RFCFG,"):
            got = _RFCFG.match(last)
            parts = command.split(",")
            want_hz = round(float(parts[1]) * 1e6)
            if not got or (int(got.group(1)), got.group(2), got.group(3)) != (want_hz, parts[2][2:], parts[3]):
                raise ModuleError(command, last, "RF configuration echo does not match the request")

"""RAKwireless RAK3172 with RUI3 firmware in LoRa P2P mode (AT commands).

Receive, RUI3: ``+EVT:RXP2P:<rssi>:<snr>:<hex payload>`` (one line). Receive, older
firmware: ``+EVT:RXP2P, RSSI <rssi>, SNR <snr>`` then ``+EVT:<hex payload>``. Following
RAK's own docs, the last ``:`` field is the payload and the first two numeric fields are
RSSI and SNR, so variants with an extra length field still parse. A leading ``;`` is
tolerated. Replies end with ``OK`` or a status such as ``AT_PARAM_ERROR``.
P2P packets carry no sender address (``has_address`` is False).
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

PROTOCOL = "rak3172"
STATUS_NAMES: dict[str, str] = {
    "AT_ERROR": "generic error",
    "AT_PARAM_ERROR": "a parameter is invalid",
    "AT_BUSY_ERROR": "the module is busy (stop P2P receive first)",
    "AT_TEST_PARAM_OVERFLOW": "a parameter is too long",
    "AT_NO_NETWORK_JOINED": "no network joined",
    "AT_RX_ERROR": "error while receiving",
    "AT_DUTYCYLE_RESTRICTED": "duty cycle restricted",
}
_NUM = re.compile(r"-?\d+")
_OLD_HEAD = re.compile(r"\+EVT:RXP2P,\s*RSSI\s*(-?\d+),\s*SNR\s*(-?\d+)")
_OLD_DATA = re.compile(r"\+EVT:([0-9A-Fa-f]*)")


class Rak3172Driver(TwoLineRecordParser):
    """Parser and command rules for RAK3172 (RUI3) P2P; see the module docstring."""

    protocol = PROTOCOL
    has_address = False

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lines = LineSplitter(self.counts, (b"+EVT:",))
        self._pending: tuple[float, float] | None = None

    def _clean(self, text: str) -> str:
        return text.strip().lstrip(";").rstrip(";")

    def _parse(self, text: str, events: list[Event]) -> None:
        if self._pending is not None:
            data = _OLD_DATA.fullmatch(text)
            if data and not text.startswith("+EVT:RXP2P") and not text.startswith("+EVT:TXP2P"):
                rssi, snr = self._pending
                self._pending = None
                payload = parse_hex(data.group(1))
                if payload is None:
                    self.counts["pair"] += 1
                    self.counts["hex"] += 1
                    return
                self.counts["pair"] += 1
                self.counts["ok"] += 1
                events.append(ModuleUplink(None, payload, rssi, snr))
                return
            self._drop_pending()
        old = _OLD_HEAD.fullmatch(text)
        if old:
            self._pending = (float(old.group(1)), float(old.group(2)))
            return
        if text.startswith("+EVT:RXP2P:"):
            fields = text[len("+EVT:RXP2P:"):].split(":")
            numbers = [f for f in fields[:-1] if _NUM.fullmatch(f.strip())]
            payload = parse_hex(fields[-1].strip()) if len(fields) >= 3 else None
            if len(numbers) < 2:
                self.counts["malformed"] += 1
            elif payload is None or not payload:
                self.counts["hex"] += 1
            else:
                self.counts["ok"] += 1
                events.append(ModuleUplink(None, payload, float(numbers[0]), float(numbers[1])))
            return
        if text == "OK" or text in STATUS_NAMES or text.startswith("+EVT:") or _is_value(text):
            self.counts["reply"] += 1
            events.append(ReplyLine(text))
            return
        self.counts["garbage"] += 1

    # --- commands ---------------------------------------------------------------
    @staticmethod
    def configure_commands(cfg: RadioConfig) -> list[str]:
        """AT commands for ``cfg``: P2P mode, radio parameters, continuous receive."""
        if cfg.address is not None:
            raise ValueError("RAK3172 P2P packets carry no address; leave 'address' unset")
        commands = ["AT", "AT+NWM=0"]
        if cfg.frequency_hz is not None or cfg.spreading_factor is not None or cfg.bandwidth_khz is not None:
            bw = cfg.bandwidth_khz or 125
            if bw not in (125, 250, 500):
                raise ValueError(f"RAK3172 P2P bandwidth must be 125, 250 or 500 kHz, not {bw}")
            sf = cfg.spreading_factor or 7
            if not 5 <= sf <= 12:
                raise ValueError(f"spreading factor {sf} is outside 5..12")
            commands.append(f"AT+P2P={cfg.frequency_hz or 868_000_000}:{sf}:{int(bw)}:0:8:14")
        commands.append("AT+PRECV=65534")
        return commands

    @staticmethod
    def is_final(command: str, line: str) -> bool:
        return line == "OK" or line in STATUS_NAMES

    @staticmethod
    def check_reply(command: str, lines: list[str]) -> None:
        last = lines[-1]
        if last != "OK":
            raise ModuleError(command, last, STATUS_NAMES.get(last, "undocumented status"))


def _is_value(text: str) -> bool:
    """A query's value line, e.g. ``868000000:9:125:0:8:15`` or ``AT+P2P=...`` echoes."""
    return bool(re.fullmatch(r"[0-9A-Za-z:.+=_?-]+", text)) and not text.startswith("+")

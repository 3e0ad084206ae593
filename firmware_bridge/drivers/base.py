"""What every module driver shares: events, radio settings, errors and a line splitter.

A driver turns the module's byte stream into events (``feed``): ModuleUplink for a
received packet, ReplyLine for anything that answers a command. It never raises on
input; every line (or binary record) gets exactly one outcome in ``counts``: "ok",
"reply", "pair" (first line of a two-line record, consumed by it) or a reject reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

MAX_LINE = 1024
ACCEPTED = ("ok", "reply", "pair")


@dataclass(frozen=True, slots=True)
class ModuleUplink:
    """A packet a module received. ``address`` is None when the protocol carries none."""

    address: str | None
    payload: bytes
    rssi_dbm: float | None
    snr_db: float | None
    seq: int | None = None
    spreading_factor: int | None = None
    frequency_hz: int | None = None


@dataclass(frozen=True, slots=True)
class ReplyLine:
    """A line that is not a received packet: a command reply or a module event."""

    text: str


Event = ModuleUplink | ReplyLine


@dataclass(frozen=True, slots=True)
class RadioConfig:
    """Radio settings to apply at open; None leaves the module's own value."""

    frequency_hz: int | None = None
    spreading_factor: int | None = None
    bandwidth_khz: float | None = None
    address: int | None = None


class ModuleError(Exception):
    """A module refused a command: ``code`` as the module sent it, ``name`` its meaning."""

    def __init__(self, command: str, code: str, name: str) -> None:
        super().__init__(f"{command!r} failed: {code} ({name})")
        self.command = command
        self.code = code
        self.name = name


class CommandTimeout(Exception):
    """No (complete) reply to a command within its timeout."""

    def __init__(self, command: str, timeout_s: float, partial: list[str]) -> None:
        super().__init__(f"no reply to {command!r} within {timeout_s:g} s (got {partial!r})")
        self.command = command
        self.partial = partial


class LineSplitter:
    """Bytes in, complete lines out (without CR/LF). A line longer than MAX_LINE is
    counted "oversized" in ``counts`` and skipped up to its newline; memory stays bounded.
    A line holding one of ``markers`` (record prefixes such as ``b"+EVT:"``) after its
    start is split there, so a record cut short (its newline lost) cannot swallow the
    next one."""

    def __init__(self, counts: Counter[str], markers: tuple[bytes, ...] = ()) -> None:
        self._markers = markers
        self._buf = bytearray()
        self.lines_out = 0  # lines handed out; with "oversized" that is every line seen
        self._skipping = False
        self._counts = counts

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            if not self._skipping:
                self._buf += piece
                if len(self._buf) > MAX_LINE:
                    self._counts["oversized"] += 1
                    self._buf.clear()
                    self._skipping = True
            if nl < 0:
                return lines
            if self._skipping:
                self._skipping = False
            else:
                line = bytes(self._buf).strip(b"\r")
                self._buf.clear()
                if line.strip():
                    parts = self._split(line)
                    self.lines_out += len(parts)
                    lines += parts
            start = nl + 1

    def _split(self, line: bytes) -> list[bytes]:
        cuts = sorted({i for m in self._markers for i in _find_all(line, m) if i > 0})
        if not cuts:
            return [line]
        bounds = [0, *cuts, len(line)]
        return [line[a:b] for a, b in pairwise(bounds) if line[a:b].strip()]


def _find_all(data: bytes, marker: bytes) -> list[int]:
    found = []
    i = data.find(marker)
    while i >= 0:
        found.append(i)
        i = data.find(marker, i + 1)
    return found


def ascii_line(line: bytes) -> str | None:
    """The line as text, or None when it holds bytes no module prints."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def parse_hex(text: str) -> bytes | None:
    """Bytes of an even-length hex string, or None."""
    if len(text) % 2:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


class TwoLineRecordParser:
    """Line handling shared by modules whose received packet takes two lines (a header with
    RSSI/SNR, then the data line): RAK3172's older form and the LoRa-E5 test mode.

    Subclasses set ``self._pending`` to the parsed header while its data line is awaited and
    implement ``_parse(text, events)``; ``_clean(text)`` may strip module-specific framing.
    Every line gets one outcome in ``counts``; a header whose data line never comes counts
    as ``orphan``.
    """

    counts: Counter[str]
    _lines: LineSplitter
    _pending: object | None

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; never raises; one outcome per line in ``counts``."""
        events: list[Event] = []
        for raw in self._lines.feed(data):
            text = ascii_line(raw)
            if text is None:
                self._drop_pending()
                self.counts["garbage"] += 1
                continue
            self._parse(self._clean(text), events)
        return events

    @property
    def lines_seen(self) -> int:
        """Lines read so far (oversized ones included); each has one outcome in ``counts``,
        except a first line still waiting for its second."""
        return self._lines.lines_out + self.counts["oversized"]

    @property
    def waiting(self) -> bool:
        """True while the first line of a two-line record waits for its second."""
        return self._pending is not None

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self.counts["orphan"] += 1
            self._pending = None

    def _clean(self, text: str) -> str:
        return text.strip()

    def _parse(self, text: str, events: list[Event]) -> None:
        raise NotImplementedError

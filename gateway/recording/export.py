"""Selecting readings from a recording and writing them as CSV or JSON lines.

:func:`select` streams the recording (oldest file first, each file in line order, i.e. the
order the gateway accepted the readings), keeps the readings of the chosen devices and profiles, inside
the time range and holding at least one of the chosen channels, and skips corrupt lines
(counted by reason in :class:`~models.recordings.ReadStats`).

An export takes two passes: :func:`plan` finds what the selection holds (devices,
channels, rows, time span), so an empty selection is an error before any output is
created; :func:`write` / :func:`write_to_path` then write it. Memory stays small: nothing
is sorted or held, so the rows come in recording order (``model finetune`` sorts by time).

CSV layout (what ``lora-gateway model finetune`` reads): ``timestamp`` (ISO 8601 UTC,
microseconds), ``device_id``, one column per channel (empty when a reading lacks it), and
with ``radio`` also ``f_port, f_cnt, rssi, snr``. JSON lines: the recording's own line
format (``models.recordings``), values cut to the chosen channels.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from models.recordings import (
    ReadStats,
    RecordedReading,
    normalise_device_id,
    read_lines,
    recording_paths,
)

Format = Literal["csv", "jsonl"]
RADIO_COLUMNS = ("f_port", "f_cnt", "rssi", "snr")


class ExportError(Exception):
    """The export cannot be made; one line saying why."""


@dataclass
class Selection:
    """Which readings to take. ``None`` means no restriction."""

    devices: frozenset[str] | None = None
    channels: list[str] | None = None
    profiles: frozenset[str] | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def of(cls, devices: list[str] | None, channels: list[str] | None, since: float | None,
           until: float | None, profiles: list[str] | None = None) -> Selection:
        if since is not None and until is not None and until < since:
            raise ExportError("--until is before --since")
        return cls(devices=frozenset(normalise_device_id(d) for d in devices) if devices else None,
                   channels=list(dict.fromkeys(channels)) if channels else None,
                   profiles=frozenset(profiles) if profiles else None, since=since, until=until)

    def describe(self) -> str:
        parts = []
        if self.devices:
            parts.append(f"device(s) {', '.join(sorted(self.devices))}")
        if self.profiles:
            parts.append(f"profile(s) {', '.join(sorted(self.profiles))}")
        if self.channels:
            parts.append(f"channel(s) {', '.join(self.channels)}")
        if self.since is not None or self.until is not None:
            parts.append(f"time {_iso(self.since) if self.since is not None else '...'} to "
                         f"{_iso(self.until) if self.until is not None else '...'}")
        return "; ".join(parts) or "everything"


@dataclass
class Summary:
    """What a selection holds (first pass) or what was written (second pass)."""

    rows: int = 0
    devices: dict[str, int] = field(default_factory=dict)  # device -> rows
    channels: dict[str, int] = field(default_factory=dict)  # channel -> values, first-seen order
    first_ts: float = math.inf
    last_ts: float = -math.inf
    stats: ReadStats = field(default_factory=ReadStats)

    def add(self, r: RecordedReading, channels: list[str] | None) -> None:
        self.rows += 1
        self.devices[r.device_id] = self.devices.get(r.device_id, 0) + 1
        for c in (channels if channels is not None else r.values):
            if c in r.values:
                self.channels[c] = self.channels.get(c, 0) + 1
        self.first_ts = min(self.first_ts, r.ts)
        self.last_ts = max(self.last_ts, r.ts)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _paths(source: Path) -> list[Path]:
    try:
        paths = recording_paths(source)
    except FileNotFoundError:
        raise ExportError(f"{source}: no such recording directory or file") from None
    except OSError as exc:
        raise ExportError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if not paths:
        raise ExportError(f"{source}: no recording files (readings-*.jsonl) there; is [record] enabled?")
    return paths


def select(paths: list[Path], sel: Selection, stats: ReadStats) -> Iterator[RecordedReading]:
    """The selected readings of ``paths`` in recording order; raises ExportError for an
    unreadable file (one line naming it)."""
    for path in paths:
        try:
            for r in read_lines(path, stats):
                if sel.devices is not None and r.device_id not in sel.devices \
                        and r.device_id.lower() not in sel.devices:
                    continue
                if sel.profiles is not None and r.profile not in sel.profiles:
                    continue
                if (sel.since is not None and r.ts < sel.since) or (sel.until is not None and r.ts > sel.until):
                    continue
                if sel.channels is not None and not any(c in r.values for c in sel.channels):
                    continue
                yield r
        except OSError as exc:
            raise ExportError(f"{path}: cannot read ({exc.strerror or exc})") from None


def survey(paths: list[Path], sel: Selection) -> Summary:
    """First pass: what the selection holds. Raises ExportError when it is empty."""
    summary = Summary()
    for r in select(paths, sel, summary.stats):
        summary.add(r, sel.channels)
    if summary.rows == 0:
        whole = Summary()
        for r in select(paths, Selection(), whole.stats):
            whole.add(r, None)
        held = (f"the recording holds {whole.rows} reading(s) of {len(whole.devices)} device(s) "
                f"({', '.join(sorted(whole.devices)[:8])}{', ...' if len(whole.devices) > 8 else ''}), channels "
                f"{', '.join(list(whole.channels)[:12]) or 'none'}"
                + (f", {_iso(whole.first_ts)} to {_iso(whole.last_ts)}" if whole.rows else ""))
        corrupt = whole.stats.corrupt_summary()
        raise ExportError(f"no readings match {sel.describe()}; {held}" + (f"; {corrupt}" if corrupt else ""))
    if sel.channels is not None:
        absent = [c for c in sel.channels if c not in summary.channels]
        if absent:
            raise ExportError(f"channel(s) {', '.join(absent)} never appear in the selected readings "
                              f"(they hold: {', '.join(summary.channels)})")
    return summary


def write_csv(out: IO[str], readings: Iterator[RecordedReading], channels: list[str], radio: bool) -> int:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["timestamp", "device_id", *channels, *(RADIO_COLUMNS if radio else ())])
    n = 0
    for r in readings:
        row: list[object] = [_iso(r.ts), r.device_id]
        row += [repr(r.values[c]) if c in r.values else "" for c in channels]
        if radio:
            row += ["" if v is None else v for v in (r.f_port, r.f_cnt, r.rssi, r.snr)]
        w.writerow(row)
        n += 1
    return n


def write_jsonl(out: IO[str], readings: Iterator[RecordedReading], channels: list[str]) -> int:
    n = 0
    for r in readings:
        out.write(r.line(channels))
        n += 1
    return n


@dataclass
class Plan:
    """A surveyed, non-empty selection ready to write."""

    paths: list[Path]
    selection: Selection
    summary: Summary
    channels: list[str]


def plan(source: Path, sel: Selection) -> Plan:
    """First pass over the recording at ``source`` (directory or one file). Raises ExportError
    for a missing/unreadable recording or an empty selection, before any output exists."""
    paths = _paths(source)
    summary = survey(paths, sel)
    return Plan(paths, sel, summary, sel.channels if sel.channels is not None else list(summary.channels))


def write(p: Plan, out: IO[str], fmt: Format, radio: bool = False) -> int:
    """Second pass: write the planned selection to ``out``; returns the rows written (more than
    the survey saw when the recorder appended meanwhile)."""
    readings = select(p.paths, p.selection, ReadStats())
    return write_csv(out, readings, p.channels, radio) if fmt == "csv" else write_jsonl(out, readings, p.channels)


def write_to_path(p: Plan, out_path: Path, fmt: Format, radio: bool = False) -> int:
    """:func:`write` into a file: written beside it as ``<name>.part``, then renamed, so an
    error never leaves half a file under the final name."""
    tmp = out_path.with_name(out_path.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            rows = write(p, f, fmt, radio)
        tmp.replace(out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{out_path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows

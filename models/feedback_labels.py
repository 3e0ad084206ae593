"""The operator-feedback files a gateway keeps under its state dir, and their reader.

Two JSON-lines files live side by side in ``<state_dir>`` (the daemon and the CLI write
them through ``gateway.alerts.feedback`` and ``gateway.alerts.alert_windows``; this
module owns the format, so ``model finetune`` reads them without importing the daemon):

- ``alert-feedback.jsonl``: one verdict per line, ``{"key", "label", "note", "at",
  "alert", ["device_id", "timestamp", "window"]}``; ``label`` is ``false_alarm`` or
  ``confirmed``; a later verdict on the same key supersedes an earlier one.
- ``alert-windows.jsonl`` (and its previous generation ``alert-windows.1.jsonl``): the
  readings around each model alert the daemon raised, ``{"key", "device_id", "kind",
  "raised_at", "score", "channels", "timestamps", "values", "raise_row", "complete",
  "cleared_at"}``: ``values`` rows in time order (physical units, null = missing), the row
  ``raise_row`` is the reading the alert was raised on, the rows before it are the window
  that led to it, the rows after it what followed (until the alert cleared or the
  collection limit). ``timestamps`` may hold null for rows whose time the daemon did not
  keep (the window before the raise). A later record on the same key (the complete one
  after the preliminary one written at raise time) supersedes the earlier. An alias line
  ``{"key": CLEAR_KEY, "alias_of": RAISE_KEY}`` lets a verdict on the clear event find
  its episode's readings.

:func:`labelled_windows` joins the two: for each verdict, the readings of its alert (from
the windows file, else the window stored with the verdict, whichever has more rows), in
the requested channel order. Torn or foreign lines are skipped and counted.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FEEDBACK_FILE = "alert-feedback.jsonl"
WINDOWS_FILE = "alert-windows.jsonl"
WINDOWS_PREVIOUS = "alert-windows.1.jsonl"
LABELS = ("false_alarm", "confirmed")
ALIASES = {"false": "false_alarm", "false-alarm": "false_alarm", "false_alarm": "false_alarm",
           "confirmed": "confirmed", "true": "confirmed"}
KEY_PATTERN = re.compile(r"^[0-9A-Za-z_.:-]{1,128}$")
MAX_WINDOW_ROWS = 4096


class FeedbackFormatError(ValueError):
    """A verdict or window that does not fit the format; the message says why in one line."""


def normalise_label(label: object) -> str:
    """``false_alarm`` or ``confirmed`` (``false``/``false-alarm``/``true`` accepted, any case)."""
    out = ALIASES.get(str(label).strip().lower())
    if out is None:
        raise FeedbackFormatError(f"label must be one of {', '.join(LABELS)} (or false), got {label!r}")
    return out


def check_key(key: object) -> str:
    """The alert key itself when it is 1-128 characters of ``[0-9A-Za-z_.:-]``."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise FeedbackFormatError("alert key must be 1-128 characters of letters, digits and _.:-")
    return key


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def check_window(window: Mapping[str, Any]) -> dict[str, Any]:
    """A window as stored: ``channels``, ``timestamps`` (float or null), ``values`` rows (NaN
    stored as null) and ``raise_row`` (default: the last row). FeedbackFormatError otherwise."""
    try:
        channels = [str(c) for c in window["channels"]]
        stamps = [_finite_or_none(t) for t in window["timestamps"]]
        values = [[_finite_or_none(v) for v in row] for row in window["values"]]
        raise_row = int(window.get("raise_row", len(values) - 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise FeedbackFormatError(f"window needs channels, timestamps and values rows ({exc})") from None
    if len(values) != len(stamps) or any(len(row) != len(channels) for row in values):
        raise FeedbackFormatError("window: one timestamp per row and one value per channel in each row")
    if len(values) > MAX_WINDOW_ROWS:
        raise FeedbackFormatError(f"window: at most {MAX_WINDOW_ROWS} rows, got {len(values)}")
    if values and not 0 <= raise_row < len(values):
        raise FeedbackFormatError(f"window: raise_row {raise_row} is outside its {len(values)} rows")
    return {"channels": channels, "timestamps": stamps, "values": values, "raise_row": raise_row}


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file (none when it is missing) and how many lines
    were skipped (torn, not JSON, not an object with a string ``key``)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    out: list[dict[str, Any]] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            out.append(rec)
        else:
            skipped += 1
    return out, skipped


def read_verdicts(state_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Every verdict oldest first, and the number of lines skipped."""
    records, skipped = read_jsonl(Path(state_dir) / FEEDBACK_FILE)
    good = [r for r in records if r.get("label") in LABELS]
    return good, skipped + len(records) - len(good)


def read_alert_windows(state_dir: str | os.PathLike[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """(latest window record per raise key, clear key -> raise key, lines skipped), over
    both generations of the windows file (the older first)."""
    windows: dict[str, dict[str, Any]] = {}
    aliases: dict[str, str] = {}
    skipped = 0
    for name in (WINDOWS_PREVIOUS, WINDOWS_FILE):
        records, bad = read_jsonl(Path(state_dir) / name)
        skipped += bad
        for rec in records:
            if isinstance(rec.get("alias_of"), str):
                aliases[rec["key"]] = rec["alias_of"]
            elif isinstance(rec.get("values"), list) and isinstance(rec.get("channels"), list):
                windows[rec["key"]] = rec
            else:
                skipped += 1
    return windows, aliases, skipped


def find_window(state_dir: str | os.PathLike[str], key: str) -> dict[str, Any] | None:
    """The stored readings of the alert ``key`` (a raise key, or a clear key through its
    alias), or None."""
    windows, aliases, _ = read_alert_windows(state_dir)
    return windows.get(aliases.get(key, key))


@dataclass(frozen=True)
class LabelledWindow:
    """An operator's verdict with the readings it labels: ``values [rows, C]`` float64 in the
    requested channel order (NaN = missing); row ``raise_row`` is the reading the alert was
    raised on."""

    key: str
    label: str
    device_id: str | None
    values: np.ndarray
    raise_row: int
    timestamps: np.ndarray  # [rows] float64, NaN where the daemon kept no time
    note: str | None = None


@dataclass
class LabelledSet:
    """What :func:`labelled_windows` found: the usable verdicts and, per reason, how many
    were left out (``no_window``, ``device``, ``channels``, ``unreadable``)."""

    windows: list[LabelledWindow] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    verdicts: int = 0

    def count(self, label: str) -> int:
        return sum(1 for w in self.windows if w.label == label)

    def _skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n


def _as_rows(window: Mapping[str, Any], channels: Sequence[str]) -> tuple[np.ndarray, int, np.ndarray] | None:
    have = [str(c) for c in window.get("channels", [])]
    if any(c not in have for c in channels):
        return None
    cols = [have.index(c) for c in channels]
    rows = window.get("values") or []
    out = np.full((len(rows), len(cols)), np.nan)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            v = row[col] if col < len(row) else None
            if v is not None:
                out[i, j] = float(v)
    raise_row = int(window.get("raise_row", len(rows) - 1))
    stamps = np.array([np.nan if t is None else float(t) for t in window.get("timestamps") or [None] * len(rows)])
    if len(stamps) != len(rows):
        stamps = np.full(len(rows), np.nan)
    return out, min(max(raise_row, 0), max(len(rows) - 1, 0)), stamps


def labelled_windows(state_dir: str | os.PathLike[str], channels: Sequence[str],
                     device_id: str | None = None) -> LabelledSet:
    """The latest verdict per alert key with its readings in ``channels`` order; verdicts of
    another device (when ``device_id`` is given), without readings, or whose readings lack
    one of ``channels`` are counted in ``skipped`` by reason."""
    verdicts, bad = read_verdicts(state_dir)
    windows, aliases, bad_windows = read_alert_windows(state_dir)
    out = LabelledSet()
    out._skip("unreadable", bad + bad_windows)
    latest = {rec["key"]: rec for rec in verdicts}
    out.verdicts = len(latest)
    for key, rec in latest.items():
        stored = windows.get(aliases.get(key, key))
        embedded = rec.get("window") if isinstance(rec.get("window"), dict) else None
        candidates = [w for w in (stored, embedded) if w is not None and w.get("values")]
        if not candidates:
            out._skip("no_window")
            continue
        best = max(candidates, key=lambda w: len(w["values"]))
        dev = (stored or {}).get("device_id") or rec.get("device_id") or (rec.get("alert") or {}).get("device_id")
        if device_id is not None and dev != device_id:
            out._skip("device")
            continue
        rows = _as_rows(best, channels)
        if rows is None:
            out._skip("channels")
            continue
        out.windows.append(LabelledWindow(key, rec["label"], dev, rows[0], rows[1], rows[2], rec.get("note")))
    return out

"""Operator feedback on alerts: "this alert was false" / "confirmed", kept in the state dir.

The store is one append-only JSON-lines file, ``<state_dir>/feedback/labels.jsonl``, one
record per verdict (a later verdict on the same key supersedes an earlier one; nothing is
rewritten in place, so a crash can at worst tear the last line, which ``load_feedback``
skips and counts). Every writer (``lora-gateway alerts feedback``, the status page, the
MQTT command topic) goes through ``record_feedback``; every reader (``model finetune``, a
status page) through ``load_feedback`` / ``latest_labels``. Standard library only.

API::

    record_feedback(state_dir, alert_key, label, note=None, *, device_id=None,
                    timestamp=None, window=None) -> dict
    load_feedback(state_dir) -> FeedbackLog          # .entries (oldest first), .skipped
    latest_labels(entries) -> dict[str, str]         # alert key -> "false" | "confirmed"

``window`` (optional) carries the readings around the alert so a later fine-tuning can use
them without the recording: ``{"channels": [...], "timestamps": [...], "values": [[...]]}``
with at most ``MAX_WINDOW_ROWS`` rows. Not done yet (issue 11): the daemon attaching that
window by itself, the MQTT command, and ``model finetune`` reading the labels.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LABELS = ("false", "confirmed")
"""The two verdicts: ``false`` (a false alarm) and ``confirmed`` (a real fault)."""
MAX_KEY = 200
MAX_NOTE = 1000
MAX_WINDOW_ROWS = 4096
FILE = Path("feedback") / "labels.jsonl"
_LOCK = threading.Lock()


class FeedbackError(ValueError):
    """Feedback that cannot be stored; the message says why in one line."""


@dataclass
class FeedbackLog:
    """What ``load_feedback`` read: ``entries`` oldest first, ``skipped`` unreadable lines."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def _check_window(window: dict[str, Any]) -> dict[str, Any]:
    try:
        channels = [str(c) for c in window["channels"]]
        stamps = [float(t) for t in window["timestamps"]]
        values = [[float(v) for v in row] for row in window["values"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise FeedbackError(f"window needs channels, timestamps and values rows ({exc})") from None
    if len(values) != len(stamps) or any(len(row) != len(channels) for row in values):
        raise FeedbackError("window: one timestamp per row and one value per channel in each row")
    if len(values) > MAX_WINDOW_ROWS:
        raise FeedbackError(f"window: at most {MAX_WINDOW_ROWS} rows, got {len(values)}")
    return {"channels": channels, "timestamps": stamps,
            "values": [[v if math.isfinite(v) else None for v in row] for row in values]}


def record_feedback(state_dir: str | Path, alert_key: str, label: str, note: str | None = None, *,
                    device_id: str | None = None, timestamp: float | None = None,
                    window: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one verdict on the alert ``alert_key`` (the idempotency key an alert carries)
    and return the stored record. ``label`` is ``false`` or ``confirmed``. Raises
    FeedbackError for a bad key, label, note or window; OSError when the state dir cannot be
    written. The line is flushed and fsynced before this returns."""
    key = (alert_key or "").strip()
    if not key or len(key) > MAX_KEY or not key.isprintable():
        raise FeedbackError(f"alert key must be 1-{MAX_KEY} printable characters")
    verdict = (label or "").strip().lower()
    if verdict not in LABELS:
        raise FeedbackError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if note is not None and len(note) > MAX_NOTE:
        raise FeedbackError(f"note is longer than {MAX_NOTE} characters")
    record: dict[str, Any] = {"alert_key": key, "label": verdict, "recorded_at": time.time()}
    if note:
        record["note"] = note
    if device_id is not None:
        record["device_id"] = str(device_id)
    if timestamp is not None:
        record["timestamp"] = float(timestamp)
    if window is not None:
        record["window"] = _check_window(window)
    path = Path(state_dir) / FILE
    line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
    with _LOCK:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return record


def load_feedback(state_dir: str | Path) -> FeedbackLog:
    """Every stored verdict, oldest first (empty when none was ever recorded); lines that do
    not parse as a verdict (a torn last line) are skipped and counted."""
    path = Path(state_dir) / FILE
    log = FeedbackLog()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return log
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.skipped += 1
            continue
        if not isinstance(record, dict) or record.get("label") not in LABELS or not record.get("alert_key"):
            log.skipped += 1
            continue
        log.entries.append(record)
    return log


def latest_labels(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Alert key -> its latest verdict."""
    return {e["alert_key"]: e["label"] for e in entries}

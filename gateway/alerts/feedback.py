"""The alert-feedback store: an operator's verdict on an alert, kept for the next adapter.

An operator marks an alert event (by its idempotency key, ``Alert.key``) as a false alarm
or as confirmed: from the status page, with ``lora-gateway alerts feedback KEY
false|confirmed``, or from any other tool. The store is one append-only JSON-lines file,
``<state_dir>/alert-feedback.jsonl``: each verdict appends a line; a later verdict on the
same key supersedes an earlier one (the history stays on disk). A line is written with one
``write`` of a complete line and fsync'd, so a crash leaves at worst a torn last line,
which the reader skips (and counts) and the next write starts after. Standard library only.

Contract:

- ``record_feedback(state_dir, alert_key, label, note=None, *, alert=None, device_id=None,
  timestamp=None, window=None)`` -> the stored record. ``label`` is ``false_alarm`` or
  ``confirmed`` (``false``/``false-alarm`` mean ``false_alarm``, ``true`` means
  ``confirmed``, any case); ``alert_key`` is 1-128 characters of ``[0-9A-Za-z_.:-]``;
  ``note`` at most 500 characters. ``alert`` adds what is known of the alert (device,
  kind, times, score); ``window`` the readings around it (``{"channels", "timestamps",
  "values"}``, at most ``MAX_WINDOW_ROWS`` rows; NaN stored as null) so a fine-tuning can
  use them without the recording. Anything invalid raises ``FeedbackError`` (a ValueError)
  with a one-line reason; an unwritable state dir raises OSError.
- ``load_feedback(state_dir)`` -> ``{alert_key: record}``, the latest verdict per key
  (empty when nothing was recorded). Records carry ``key``, ``label``, ``note``, ``at``
  (UNIX seconds of the verdict), ``alert`` (dict or None), and ``device_id``,
  ``timestamp``, ``window`` when given.
- ``read_feedback(state_dir)`` -> ``FeedbackLog``: every verdict oldest first, and how many
  lines were skipped as unreadable.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "alert-feedback.jsonl"
LABELS = ("false_alarm", "confirmed")
_ALIASES = {"false": "false_alarm", "false-alarm": "false_alarm", "false_alarm": "false_alarm",
            "confirmed": "confirmed", "true": "confirmed"}
_KEY = re.compile(r"^[0-9A-Za-z_.:-]{1,128}$")
MAX_NOTE = 500
MAX_WINDOW_ROWS = 4096
_ALERT_FIELDS = ("device_id", "kind", "state", "severity", "timestamp", "score", "message", "details")
_lock = threading.Lock()


class FeedbackError(ValueError):
    """Feedback that cannot be stored; the message says why in one line."""


@dataclass
class FeedbackLog:
    """Every stored verdict, oldest first, and the number of unreadable lines skipped."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def feedback_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the store lives under a gateway's state directory."""
    return Path(state_dir) / FILE_NAME


def normalise_label(label: str) -> str:
    """``false_alarm`` or ``confirmed``; FeedbackError for anything else."""
    out = _ALIASES.get(str(label).strip().lower())
    if out is None:
        raise FeedbackError(f"label must be one of {', '.join(LABELS)} (or false), got {label!r}")
    return out


def _check_window(window: Mapping[str, Any]) -> dict[str, Any]:
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


def record_feedback(state_dir: str | os.PathLike[str], alert_key: str, label: str, note: str | None = None,
                    *, alert: Mapping[str, Any] | None = None, device_id: str | None = None,
                    timestamp: float | None = None, window: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Store one verdict (see the module docstring); returns the record written."""
    if not isinstance(alert_key, str) or not _KEY.match(alert_key):
        raise FeedbackError("alert key must be 1-128 characters of letters, digits and _.:-")
    norm = normalise_label(label)
    if note is not None:
        note = str(note).strip() or None
        if note is not None and len(note) > MAX_NOTE:
            raise FeedbackError(f"note is longer than {MAX_NOTE} characters")
    record: dict[str, Any] = {
        "key": alert_key, "label": norm, "note": note, "at": time.time(),
        "alert": {k: alert[k] for k in _ALERT_FIELDS if k in alert} if alert is not None else None}
    if device_id is not None:
        record["device_id"] = str(device_id)
    if timestamp is not None:
        record["timestamp"] = float(timestamp)
    if window is not None:
        record["window"] = _check_window(window)
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")
    path = feedback_path(state_dir)
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # after a torn last line: start a fresh one
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    return record


def read_feedback(state_dir: str | os.PathLike[str]) -> FeedbackLog:
    """Every stored verdict, oldest first; torn or foreign lines are skipped and counted."""
    log = FeedbackLog()
    try:
        text = feedback_path(state_dir).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return log
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            log.skipped += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str) and rec.get("label") in LABELS:
            log.entries.append(rec)
        else:
            log.skipped += 1
    return log


def load_feedback(state_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The latest verdict per alert key (see the module docstring)."""
    return {rec["key"]: rec for rec in read_feedback(state_dir).entries}

"""The alert-feedback store: an operator's verdict on an alert, kept for the next adapter.

An operator marks an alert event (by its idempotency key, ``Alert.key``) as a false alarm
or as confirmed: from the status page, with ``lora-gateway alerts feedback KEY
false|confirmed``, over the MQTT command topic (``gateway.control.feedback_command``), or
from any other tool. The store is one append-only JSON-lines file,
``<state_dir>/alert-feedback.jsonl`` (format: ``models.feedback_labels``, which
``model finetune --feedback`` reads): each verdict appends a line; a later verdict on the
same key supersedes an earlier one (the history stays on disk). A line is written with one
``write`` of a complete line and fsync'd, so a crash leaves at worst a torn last line,
which the reader skips (and counts) and the next write starts after. Standard library and
numpy only.

Contract:

- ``record_feedback(state_dir, alert_key, label, note=None, *, alert=None, device_id=None,
  timestamp=None, window=None, attach_window=True)`` -> the stored record. ``label`` is
  ``false_alarm`` or ``confirmed`` (``false``/``false-alarm`` mean ``false_alarm``,
  ``true`` means ``confirmed``, any case); ``alert_key`` is 1-128 characters of
  ``[0-9A-Za-z_.:-]``; ``note`` at most 500 characters. ``alert`` adds what is known of
  the alert (device, kind, times, score); ``window`` the readings around it
  (``{"channels", "timestamps", "values"[, "raise_row"]}``, at most ``MAX_WINDOW_ROWS``
  rows; NaN stored as null). Without ``window`` (and with ``attach_window``) the readings
  the daemon kept for that alert (``<state_dir>/alert-windows.jsonl``,
  ``gateway.alerts.alert_windows``) are copied into the verdict, so the verdict keeps its
  data after the windows file has rotated; ``alert`` and ``device_id`` are filled from
  them when not given. Anything invalid raises ``FeedbackError`` (a ValueError) with a
  one-line reason; an unwritable state dir raises OSError.
- ``load_feedback(state_dir)`` -> ``{alert_key: record}``, the latest verdict per key
  (empty when nothing was recorded). Records carry ``key``, ``label``, ``note``, ``at``
  (UNIX seconds of the verdict), ``alert`` (dict or None), and ``device_id``,
  ``timestamp``, ``window`` when given or found.
- ``read_feedback(state_dir)`` -> ``FeedbackLog``: every verdict oldest first, and how many
  lines were skipped as unreadable.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.feedback_labels import (
    FEEDBACK_FILE,
    LABELS,
    MAX_WINDOW_ROWS,
    FeedbackFormatError,
    check_key,
    check_window,
    find_window,
    read_verdicts,
)
from models.feedback_labels import normalise_label as _normalise

FILE_NAME = FEEDBACK_FILE
MAX_NOTE = 500
_ALERT_FIELDS = ("device_id", "kind", "state", "severity", "timestamp", "score", "message", "details")
_lock = threading.Lock()

__all__ = ["FILE_NAME", "LABELS", "MAX_WINDOW_ROWS", "FeedbackError", "FeedbackLog", "feedback_path",
           "load_feedback", "normalise_label", "read_feedback", "record_feedback"]


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
    try:
        return _normalise(label)
    except FeedbackFormatError as exc:
        raise FeedbackError(str(exc)) from None


def record_feedback(state_dir: str | os.PathLike[str], alert_key: str, label: str, note: str | None = None,
                    *, alert: Mapping[str, Any] | None = None, device_id: str | None = None,
                    timestamp: float | None = None, window: Mapping[str, Any] | None = None,
                    attach_window: bool = True) -> dict[str, Any]:
    """Store one verdict (see the module docstring); returns the record written."""
    try:
        check_key(alert_key)
        norm = _normalise(label)
        checked = check_window(window) if window is not None else None
    except FeedbackFormatError as exc:
        raise FeedbackError(str(exc)) from None
    if note is not None:
        note = str(note).strip() or None
        if note is not None and len(note) > MAX_NOTE:
            raise FeedbackError(f"note is longer than {MAX_NOTE} characters")
    stored = find_window(state_dir, alert_key) if attach_window and checked is None else None
    if stored is not None:
        checked = check_window(stored)
        if alert is None:
            alert = {"device_id": stored.get("device_id"), "kind": stored.get("kind"), "state": "raised",
                     "timestamp": stored.get("raised_at"), "score": stored.get("score")}
        device_id = device_id if device_id is not None else stored.get("device_id")
    record: dict[str, Any] = {
        "key": alert_key, "label": norm, "note": note, "at": time.time(),
        "alert": {k: alert[k] for k in _ALERT_FIELDS if k in alert} if alert is not None else None}
    if device_id is not None:
        record["device_id"] = str(device_id)
    if timestamp is not None:
        record["timestamp"] = float(timestamp)
    if checked is not None:
        record["window"] = checked
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
    entries, skipped = read_verdicts(state_dir)
    return FeedbackLog(entries, skipped)


def load_feedback(state_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The latest verdict per alert key (see the module docstring)."""
    return {rec["key"]: rec for rec in read_feedback(state_dir).entries}

"""The alert-feedback store: an operator's verdict on an alert, kept for the next adapter.

An operator marks an alert event (by its idempotency key, ``Alert.key``) as a false alarm
or as confirmed, from the status page or any other tool; ``model finetune`` reads the labels
back. The store is one append-only JSON-lines file, ``<state_dir>/alert-feedback.jsonl``:
each call appends a line, and a later verdict on the same key replaces an earlier one in
``load_feedback`` (the history stays on disk). Lines are written with one ``write`` of a
complete line and fsync'd, so a crash leaves at worst a torn last line, which the reader
skips and the next write starts after.

Contract:

- ``record_feedback(state_dir, alert_key, label, note=None)`` -> the stored record (a dict).
  ``label`` is ``"false_alarm"`` or ``"confirmed"`` (``"false"`` is taken as
  ``"false_alarm"``); ``alert_key`` is 1-128 characters of ``[0-9A-Za-z_.:-]``; ``note`` is
  at most 500 characters. Anything else raises ValueError with a one-line reason. The
  keyword ``alert`` (optional) adds what is known of the alert (device, kind, times, score),
  so a reader does not need the outbox to place it.
- ``load_feedback(state_dir)`` -> ``{alert_key: record}``, the latest verdict per key; an
  empty dict when nothing was recorded. Records carry ``key``, ``label``, ``note``,
  ``at`` (UNIX seconds of the verdict) and ``alert`` (dict or None).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Mapping

FILE_NAME = "alert-feedback.jsonl"
LABELS = ("false_alarm", "confirmed")
_ALIASES = {"false": "false_alarm", "false-alarm": "false_alarm", "false_alarm": "false_alarm",
            "confirmed": "confirmed", "true": "confirmed"}
_KEY = re.compile(r"^[0-9A-Za-z_.:-]{1,128}$")
MAX_NOTE = 500
_ALERT_FIELDS = ("device_id", "kind", "state", "severity", "timestamp", "score", "message", "details")
_lock = threading.Lock()


def feedback_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the store lives under a gateway's state directory."""
    return Path(state_dir) / FILE_NAME


def normalise_label(label: str) -> str:
    """``false_alarm`` or ``confirmed``; ValueError for anything else."""
    out = _ALIASES.get(str(label).strip().lower())
    if out is None:
        raise ValueError(f"label must be one of {', '.join(LABELS)} (got {label!r})")
    return out


def record_feedback(state_dir: str | os.PathLike[str], alert_key: str, label: str, note: str | None = None,
                    *, alert: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Store one verdict (see module docstring); returns the record written."""
    if not isinstance(alert_key, str) or not _KEY.match(alert_key):
        raise ValueError("alert key must be 1-128 characters of letters, digits and _.:-")
    norm = normalise_label(label)
    if note is not None:
        note = str(note).strip() or None
        if note is not None and len(note) > MAX_NOTE:
            raise ValueError(f"note is longer than {MAX_NOTE} characters")
    record = {"key": alert_key, "label": norm, "note": note, "at": time.time(),
              "alert": {k: alert[k] for k in _ALERT_FIELDS if k in alert} if alert is not None else None}
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


def load_feedback(state_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The latest verdict per alert key (see module docstring). Torn or foreign lines are skipped."""
    path = feedback_path(state_dir)
    out: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str) and rec.get("label") in LABELS:
            out[rec["key"]] = rec
    return out

"""An operator's verdict on an alert over the MQTT command topic (``[commands]``).

The listener of ``gateway.control.command_topic`` also subscribes to

- ``<prefix>/command/alert/feedback``: a JSON object ``{"key": ALERT_KEY, "label":
  "false"|"false_alarm"|"confirmed", "note": "...", "request_id": ...}`` (``note`` and
  ``request_id`` optional; no other keys). ``key`` is the alert's idempotency key, as the
  handlers deliver it (the raise's or the clear's).

and answers each on ``<prefix>/command/alert/result``: ``{"command": "feedback",
"request_id", "key", "label", "ok", "reason", "error", "known", "window_rows"}``.
``known`` says whether the daemon holds the readings of that alert
(``gateway.alerts.alert_windows``); ``window_rows`` how many were stored with the verdict
(0 for an alert the daemon kept nothing of: a rule alert, or one older than the windows
files; the verdict is stored all the same). The verdict goes to the same store as
``lora-gateway alerts feedback`` (``gateway.alerts.feedback.record_feedback``).

Rejected before anything is stored, each counted in
``alert_feedback_rejects_total{reason}`` and answered: ``too_large`` (over 4 KiB),
``retained``, ``not_json``, ``not_object``, ``unknown_key``, ``bad_key`` (not 1-128
characters of ``[0-9A-Za-z_.:-]``), ``bad_label``, ``bad_note`` (not a string of at most
500 characters), ``bad_request_id``, ``busy``. A verdict that cannot be written (disk) is
answered ``ok: false, reason: write_failed``. Stored verdicts count in
``alert_feedback_total{label}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.alerts.feedback import MAX_NOTE, FeedbackError, record_feedback
from gateway.metrics import Metrics
from models.feedback_labels import FeedbackFormatError, check_key, normalise_label

FEEDBACK_LEAF = "command/alert/feedback"
FEEDBACK_RESULT_LEAF = "command/alert/result"
MAX_PAYLOAD_BYTES = 4096
_KEYS = {"key", "label", "note", "request_id"}


class FeedbackRejected(ValueError):
    """A feedback command that cannot be stored; ``reason`` is its counted reason code."""

    def __init__(self, reason: str, message: str, request_id: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id
        self.key = key


@dataclass(frozen=True)
class FeedbackCommand:
    """A validated verdict."""

    key: str
    label: str  # false_alarm | confirmed
    note: str | None = None
    request_id: str | None = None


def parse_feedback(payload: bytes, retained: bool = False) -> FeedbackCommand:
    """Validate a feedback command's payload; raises FeedbackRejected with a reason code."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise FeedbackRejected("too_large", f"command of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeedbackRejected("not_json", f"command is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FeedbackRejected("not_object", 'command must be a JSON object {"key": ..., "label": ...}')
    request_id = data.get("request_id")
    if request_id is not None:
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)) or len(str(request_id)) > 128:
            raise FeedbackRejected("bad_request_id", "request_id must be a string of at most 128 characters "
                                   "or an integer")
        request_id = str(request_id)
    key = data.get("key") if isinstance(data.get("key"), str) else None
    if retained:
        raise FeedbackRejected("retained", "retained commands are refused (they would run again on every "
                               "reconnect); publish with retain=false", request_id, key)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise FeedbackRejected("unknown_key", f"unknown key(s) {unknown}; expected {sorted(_KEYS)}", request_id, key)
    try:
        check_key(data.get("key"))
    except FeedbackFormatError as exc:
        raise FeedbackRejected("bad_key", str(exc), request_id) from None
    try:
        label = normalise_label(data.get("label"))
    except FeedbackFormatError as exc:
        raise FeedbackRejected("bad_label", str(exc), request_id, key) from None
    note = data.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise FeedbackRejected("bad_note", f"note must be a string of at most {MAX_NOTE} characters", request_id, key)
    assert key is not None
    return FeedbackCommand(key=key, label=label, note=note, request_id=request_id)


def rejection_reply(exc: FeedbackRejected) -> dict[str, Any]:
    return {"command": "feedback", "request_id": exc.request_id, "key": exc.key, "label": None, "ok": False,
            "reason": exc.reason, "error": str(exc), "known": None, "window_rows": 0}


def store_feedback(state_dir: Path, command: FeedbackCommand, metrics: Metrics) -> dict[str, Any]:
    """Store the verdict (with the alert's readings when the daemon kept them); the reply."""
    reply: dict[str, Any] = {"command": "feedback", "request_id": command.request_id, "key": command.key,
                             "label": command.label, "ok": False, "reason": "", "error": None, "known": False,
                             "window_rows": 0}
    try:
        record = record_feedback(state_dir, command.key, command.label, command.note)
    except (FeedbackError, OSError) as exc:
        metrics.inc("alert_feedback_total", result="error", label=command.label)
        reply.update(reason="write_failed", error=str(exc))
        return reply
    metrics.inc("alert_feedback_total", result="ok", label=command.label)
    rows = len((record.get("window") or {}).get("values") or [])
    reply.update(ok=True, reason="stored", known=rows > 0, window_rows=rows)
    return reply

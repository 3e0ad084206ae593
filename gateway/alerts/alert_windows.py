"""The readings around each model alert, kept so that an operator's verdict has data to label.

``AlertWindowKeeper`` is a ``ReadingObserver`` on the pipeline and is told every alert the
gateway publishes (``on_alert``, from ``Gateway.publish_alerts``, on the pipeline thread).
When an ``anomaly`` alert is raised it copies the device's window (the ``T`` readings in
physical units that led to the raise, missing values as null) and then collects the
readings that follow, until the alert clears or ``after_rows`` more have arrived. Each
alert gives two records in ``<state_dir>/alert-windows.jsonl`` (format:
``models.feedback_labels``): a preliminary one at raise time (the window) and the complete
one (window + what followed; it supersedes the first). A clear adds an alias line (clear
key -> raise key). ``gateway.alerts.feedback.record_feedback`` copies a found record into
the verdict; ``model finetune --feedback STATE_DIR`` joins the two files.

Bounded, every drop counted in ``alert_windows_dropped_total{reason}``:

- memory: at most ``max_pending`` alerts collect at once; a new raise beyond that
  finishes the oldest collection early (written with the rows it has; counted
  ``alert_windows_cut_short_total``). Per collection ``T + after_rows`` rows.
- the writer: records go to a bounded queue (``queue_size``) drained by one writer
  thread; a full queue drops the record (reason ``queue_full``); a failed write drops it
  (reason ``write_failed``).
- disk: when ``alert-windows.jsonl`` passes ``max_bytes / 2`` it becomes
  ``alert-windows.1.jsonl`` (the previous generation is deleted: its records are counted,
  reason ``rotated``), so both files together stay under about ``max_bytes``.

Timestamps are known for the raise reading and the rows after it; the window rows before
it come from the device's ring, which keeps no times (stored as null). When the batch that
raised the alert was scored a few readings after the one that made it due (high rates,
batching deadline), those readings are already in the ring: the raise row is then the
newest ring row, not the due one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.alerts.policy_state import alert_key
from gateway.metrics import Metrics
from gateway.pipeline.windows import WindowStore
from gateway.types import Alert, RawUplink, Reading
from models.feedback_labels import WINDOWS_FILE, WINDOWS_PREVIOUS

log = logging.getLogger(__name__)

MODEL_KINDS = ("anomaly",)


class FeedbackSection(BaseModel):
    """``[feedback]``: the readings the daemon keeps around model alerts for operator verdicts."""

    model_config = ConfigDict(extra="forbid")
    keep_windows: bool = Field(True, description="Keep the readings around each anomaly alert (the window that "
                               "raised it and what followed) in <state_dir>/alert-windows.jsonl, so an operator's "
                               "false/confirmed verdict has data for `model finetune --feedback`.")
    after_rows: int = Field(32, ge=0, le=4000, description="Readings kept after the raise (fewer when the alert "
                            "clears first).")
    max_pending: int = Field(64, ge=1, le=10000, description="Alerts collecting readings at once; a new one beyond "
                             "this ends the oldest collection early.")
    max_bytes: int = Field(8 * 1024 * 1024, ge=65536, description="Disk budget of the windows files (two "
                           "generations of about half each; the oldest generation is deleted, counted).")


def new_alert_windows(gateway: Any, observers: list[Any]) -> AlertWindowKeeper | None:
    """The started keeper of a ``Gateway`` (appended to its reading ``observers``), or None
    when ``[feedback] keep_windows`` is off. Windows are looked up in the gateway's pipeline."""
    cfg = gateway.config
    section: FeedbackSection = cfg.feedback
    if not section.keep_windows:
        return None
    keeper = AlertWindowKeeper(cfg.gateway.state_dir, gateway.metrics, after_rows=section.after_rows,
                               max_pending=section.max_pending, max_bytes=section.max_bytes)
    keeper.windows_of = lambda: gateway.pipeline.windows if gateway.pipeline is not None else None
    keeper.start()
    observers.append(keeper)
    return keeper


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@dataclass
class _Collection:
    alert: Alert
    channels: list[str]
    index: dict[str, int]
    rows: list[list[float | None]]
    stamps: list[float | None]
    raise_row: int
    after: int = 0
    cleared_at: float | None = None
    clear_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, complete: bool) -> dict[str, Any]:
        a = self.alert
        return {"key": a.key, "device_id": a.device_id, "kind": a.kind, "raised_at": a.timestamp,
                "score": a.score, "channels": self.channels, "timestamps": list(self.stamps),
                "values": [list(r) for r in self.rows], "raise_row": self.raise_row, "complete": complete,
                "cleared_at": self.cleared_at, "clear_key": self.clear_key}


class AlertWindowKeeper:
    """Keeps the readings around model alerts under the state dir (see the module docstring)."""

    def __init__(self, state_dir: Path, metrics: Metrics, *, after_rows: int = 32, max_pending: int = 64,
                 max_bytes: int = 8 * 1024 * 1024, queue_size: int = 256) -> None:
        self.directory = Path(state_dir)
        self.metrics = metrics
        self.after_rows = after_rows
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.windows_of: Callable[[], WindowStore | None] = lambda: None  # the pipeline's windows
        self._pending: dict[str, _Collection] = {}  # device id -> its open collection (insertion order)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        metrics.describe("alert_windows_written_total", "Alert window records written under the state dir")
        metrics.describe("alert_windows_dropped_total", "Alert window records not kept, by reason")
        metrics.describe("alert_windows_cut_short_total", "Alert window collections ended early (max_pending)")
        metrics.zero(["alert_windows_written_total"])

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._write_loop, name="alert-windows", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write every collection still open (as it stands), then the queue, then stop."""
        for coll in list(self._pending.values()):
            self._submit(coll.record(complete=False))
        self._pending.clear()
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            thread.join(timeout)

    def pending(self) -> int:
        return len(self._pending)

    # ---- pipeline thread ----------------------------------------------------------------
    def observe_reading(self, reading: Reading, profile: Any, uplink: RawUplink) -> None:
        coll = self._pending.get(reading.device_id)
        if coll is None:
            return
        row: list[float | None] = [None] * len(coll.channels)
        for name, value in reading.values.items():
            i = coll.index.get(name)
            if i is not None:
                row[i] = _num(float(value))
        coll.rows.append(row)
        coll.stamps.append(float(reading.timestamp))
        coll.after += 1
        if coll.after >= self.after_rows:
            self._finish(reading.device_id)

    def on_alert(self, alert: Alert) -> None:
        if alert.kind not in MODEL_KINDS:
            return
        if alert.state == "raised":
            self._begin(alert)
            return
        start = alert.details.get("episode_start")
        if start is None:
            return
        raise_key = alert_key(alert.device_id, alert.kind, "raised", float(start))
        self._submit({"key": alert.key, "alias_of": raise_key})
        coll = self._pending.get(alert.device_id)
        if coll is not None and coll.alert.key == raise_key:
            coll.cleared_at, coll.clear_key = alert.timestamp, alert.key
            self._finish(alert.device_id)

    def _begin(self, alert: Alert) -> None:
        store = self.windows_of()
        window = store.get(alert.device_id) if store is not None else None
        if window is None:
            self.metrics.inc("alert_windows_dropped_total", reason="no_window")
            return
        if alert.device_id in self._pending:
            self._finish(alert.device_id)
        while len(self._pending) >= self.max_pending:
            self.metrics.inc("alert_windows_cut_short_total")
            self._finish(next(iter(self._pending)))
        n = min(window.count, window.length)
        values, mask = window.values()[-n:], window.mask()[-n:]
        rows = [[_num(float(v)) if m else None for v, m in zip(vr, mr)] for vr, mr in zip(values, mask)]
        stamps: list[float | None] = [None] * n
        if n:
            stamps[-1] = window.last_timestamp
        channels = list(window.channels)
        coll = _Collection(alert, channels, {c: i for i, c in enumerate(channels)}, rows, stamps, max(n - 1, 0))
        self._pending[alert.device_id] = coll
        self._submit(coll.record(complete=False))
        if self.after_rows <= 0:
            self._finish(alert.device_id)

    def _finish(self, device_id: str) -> None:
        coll = self._pending.pop(device_id, None)
        if coll is not None:
            self._submit(coll.record(complete=True))

    def _submit(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.metrics.inc("alert_windows_dropped_total", reason="queue_full")

    # ---- writer thread ------------------------------------------------------------------
    def _write_loop(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            records = [r for r in batch if r is not None]
            if records:
                self._write(records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records``, rotating whenever the current file would pass half the budget;
        one fsync per file written."""
        path = self.directory / WINDOWS_FILE
        half = self.max_bytes // 2
        written = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            size = path.stat().st_size if path.exists() else 0
            chunk: list[bytes] = []
            chunk_bytes = 0
            for rec in records:
                line = (json.dumps(rec, separators=(",", ":")) + "\n").encode("utf-8")
                if size + chunk_bytes + len(line) > half and size + chunk_bytes > 0:
                    self._append(path, chunk)
                    written += len(chunk)
                    self._rotate(path)
                    size, chunk, chunk_bytes = 0, [], 0
                chunk.append(line)
                chunk_bytes += len(line)
            self._append(path, chunk)
            written += len(chunk)
        except OSError as exc:
            self.metrics.inc("alert_windows_dropped_total", len(records) - written, reason="write_failed")
            log.warning("alert windows: cannot write %s: %s", path, exc)
        if written:
            self.metrics.inc("alert_windows_written_total", written)

    @staticmethod
    def _append(path: Path, lines: list[bytes]) -> None:
        if not lines:
            return
        with open(path, "ab") as fh:
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())

    def _rotate(self, path: Path) -> None:
        previous = self.directory / WINDOWS_PREVIOUS
        if previous.exists():
            try:
                with open(previous, "rb") as fh:
                    lost = sum(1 for line in fh if line.strip())
            except OSError:
                lost = 0
            self.metrics.inc("alert_windows_dropped_total", lost, reason="rotated")
        os.replace(path, previous)

"""The reading recorder: every accepted decoded reading appended to day files on disk.

Contract:

- ``put(reading, profile, f_port)`` is called by the pipeline thread for each accepted
  reading. It never blocks and never does I/O: a device/profile filter (two set lookups),
  then an append to a bounded in-memory queue. When the queue is full the reading is
  dropped and counted (``recorder_dropped_total{reason=queue_full}``).
- A writer thread wakes every ``flush_interval_s`` (or sooner when the queue is half
  full), encodes the queued readings (``models.recordings``) and hands them to the
  OS in one unbuffered ``write`` per file: once a batch is written it survives a crash of
  the process. A crash loses at most what was still queued (at most ``flush_interval_s``
  of readings, at most ``queue_size``) and may leave a torn last line, which readers skip
  and count. Power loss can also lose what the OS had not yet put on the disk (no fsync).
- Files: ``readings-YYYY-MM-DD.NNN.jsonl`` per UTC day (wall clock); a new part starts
  when the next batch would take a file past ``max_file_bytes``. After a restart the day's
  last part is appended to (a newline first if its last line was torn).
- Retention: files of days older than ``max_days`` and, past ``max_total_bytes`` (the
  current file included), the oldest files are deleted, oldest first, each deletion
  counted (``recorder_files_deleted_total{reason}``, ``recorder_bytes_deleted_total``).
  The file being written is never deleted; ``max_file_bytes <= max_total_bytes / 2``
  (config check) keeps the total under the budget.
- Write failures (disk full, directory gone) drop the batch, counted
  (``recorder_dropped_total{reason=write_error}``); the file is reopened on the next batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.metrics import Metrics
from gateway.recording.config import RecordConfig
from models.recordings import RecordingFile, encode, file_name, list_files
from gateway.ingest.profiles import ProfileConfig
from gateway.types import RawUplink, Reading

log = logging.getLogger(__name__)

AGE_CHECK_S = 60.0  # how often the writer looks for a day change and files past max_days


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


class ReadingRecorder:
    """See the module docstring. ``clock`` (Unix seconds) names the day files and ages them."""

    def __init__(self, config: RecordConfig, directory: Path, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.directory = Path(directory)
        self.metrics = metrics
        self.clock = clock
        self._devices = frozenset(config.devices) or None
        self._profiles = frozenset(config.profiles) or None
        self._max_queue = config.queue_size
        self._wake_at = max(1, config.queue_size // 2)
        self._queue: deque[tuple[Reading, str | None, int | None]] = deque()
        self._wake = threading.Event()
        self._queued = 0  # readings queued so far (pipeline thread)
        self._handled = 0  # of those, written or counted as dropped (writer thread)
        self._handled_cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._closed: deque[RecordingFile] = deque()  # oldest first, not being written
        self._closed_bytes = 0
        self._file: Any = None  # raw (unbuffered) file object of the current part
        self._cur: RecordingFile | None = None
        self._cur_size = 0
        self._failing = False
        for name, text in (
            ("recorder_readings_total", "Readings written to the recording"),
            ("recorder_dropped_total", "Readings not recorded, by reason (queue_full, write_error, unencodable)"),
            ("recorder_files_deleted_total", "Recording files deleted by retention, by reason (max_days, max_total_bytes)"),
            ("recorder_bytes_deleted_total", "Bytes of recording files deleted by retention, by reason"),
            ("recorder_retention_failures_total", "Recording files retention could not delete"),
            ("recorder_bytes", "Bytes in the recording directory's files"),
            ("recorder_files", "Files in the recording directory"),
            ("recorder_queue_depth", "Readings waiting for the recorder's writer thread"),
        ):
            metrics.describe(name, text)

    # ---- called from the pipeline thread ----------------------------------------------
    def observe_reading(self, reading: Reading, profile: ProfileConfig, uplink: RawUplink) -> None:
        """``ReadingObserver``: record ``reading`` (never blocks; drops are counted)."""
        self.put(reading, profile, uplink.f_port)

    def put(self, reading: Reading, profile: Any, f_port: int | None) -> None:
        """Queue ``reading`` if the filter selects it; never blocks (drops are counted)."""
        if self._devices is not None and reading.device_id not in self._devices \
                and reading.device_id.lower() not in self._devices:
            return
        name = profile.name if profile is not None else None
        if self._profiles is not None and name not in self._profiles:
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.metrics.inc("recorder_dropped_total", reason="queue_full")
            return
        queue.append((reading, name, f_port))
        self._queued += 1
        if len(queue) == self._wake_at:
            self._wake.set()

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Create the directory, apply retention to what is there, start the writer.
        Raises OSError when the directory cannot be created or listed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._closed = deque(list_files(self.directory))
        self._closed_bytes = sum(f.size for f in self._closed)
        self._apply_age_bound()
        self._apply_size_bound()
        self._publish_gauges()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        log.info("recording readings to %s (%d file(s), %d bytes there)", self.directory, len(self._closed),
                 self._closed_bytes)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the file, stop the writer thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("recorder writer did not stop within %.1f s; %d reading(s) unwritten",
                            timeout, len(self._queue))
            self._thread = None

    def queue_depth(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every reading queued before this call is written (or its write error
        counted); call it from the pipeline thread. False when ``timeout`` passed first.
        A clustered source calls it before acknowledging, so the recording holds every
        acknowledged reading (written to the OS, not fsynced)."""
        target = self._queued
        self._wake.set()
        with self._handled_cond:
            return self._handled_cond.wait_for(lambda: self._handled >= target, timeout)

    def wake(self) -> None:
        """Have the writer write what is queued now instead of at its next interval."""
        self._wake.set()

    # ---- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        next_age_check = time.monotonic() + AGE_CHECK_S
        while True:
            self._wake.wait(self.config.flush_interval_s)
            self._wake.clear()
            stopping = self._stopping
            queue = self._queue
            n = len(queue)
            if n:
                self._write([queue.popleft() for _ in range(n)])
                with self._handled_cond:
                    self._handled += n
                    self._handled_cond.notify_all()
            if time.monotonic() >= next_age_check:
                next_age_check = time.monotonic() + AGE_CHECK_S
                if self._cur is not None and self._cur.day != utc_day(self.clock()):
                    self._close_current()
                self._apply_age_bound()
            self._publish_gauges()
            if stopping and not queue:
                self._close_current()
                self._publish_gauges()
                return

    def _write(self, batch: list[tuple[Reading, str | None, int | None]]) -> None:
        lines: list[bytes] = []
        for reading, profile, f_port in batch:
            radio = reading.radio
            try:
                lines.append(encode(reading.timestamp, reading.device_id, reading.values, profile, f_port,
                                    reading.f_cnt, radio.rssi, radio.snr).encode())
            except (ValueError, TypeError):
                self.metrics.inc("recorder_dropped_total", reason="unencodable")
        written = 0
        try:
            self._open_for(utc_day(self.clock()))
            max_file = self.config.max_file_bytes
            chunk: list[bytes] = []
            size = self._cur_size
            for line in lines:
                if size + len(line) > max_file and size > 0:
                    written += self._write_chunk(chunk)
                    chunk = []
                    self._rotate()
                    size = 0
                chunk.append(line)
                size += len(line)
            written += self._write_chunk(chunk)
            if self._failing:
                self._failing = False
                log.info("recorder writes to %s work again", self.directory)
        except OSError as exc:
            self.metrics.inc("recorder_dropped_total", len(lines) - written, reason="write_error")
            if not self._failing:
                log.warning("recorder cannot write to %s (%s): readings are dropped and counted until it can",
                            self.directory, exc)
            self._failing = True
            self._abandon_current()
        if written:
            self.metrics.inc("recorder_readings_total", written)
        self._apply_size_bound()

    def _write_chunk(self, chunk: list[bytes]) -> int:
        if not chunk:
            return 0
        view = memoryview(b"".join(chunk))
        while view:
            n = self._file.write(view)
            view = view[n:]
            self._cur_size += n
        return len(chunk)

    # ---- files ------------------------------------------------------------------------
    def _open_for(self, day: str) -> None:
        """Make the current file one of ``day``: keep it, reopen the day's last part, or start one."""
        if self._file is not None and self._cur is not None and self._cur.day == day:
            return
        self._close_current()
        part = 0
        if self._closed and self._closed[-1].day == day:
            last = self._closed[-1]
            if last.size < self.config.max_file_bytes:
                self._closed.pop()
                self._closed_bytes -= last.size
                self._open(last.day, last.part)
                return
            part = last.part + 1
        self._open(day, part)

    def _open(self, day: str, part: int) -> None:
        path = self.directory / file_name(day, part)
        f = path.open("ab", buffering=0)
        try:
            size = f.seek(0, 2)
            if size:
                with path.open("rb") as r:
                    r.seek(size - 1)
                    if r.read(1) != b"\n":  # a torn last line (crash): keep it apart from the next one
                        size += f.write(b"\n")
        except OSError:
            f.close()
            raise
        self._file, self._cur, self._cur_size = f, RecordingFile(path, day, part, size), size

    def _rotate(self) -> None:
        assert self._cur is not None
        day, part = self._cur.day, self._cur.part + 1
        self._close_current()
        self._open(day, part)

    def _close_current(self) -> None:
        if self._file is None or self._cur is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            log.warning("closing %s failed: %s", self._cur.path, exc)
        closed = RecordingFile(self._cur.path, self._cur.day, self._cur.part, self._cur_size)
        self._closed.append(closed)
        self._closed_bytes += closed.size
        self._file, self._cur, self._cur_size = None, None, 0

    def _abandon_current(self) -> None:
        """After a write error: close without trusting our size; it is re-read from disk."""
        if self._file is None or self._cur is None:
            return
        try:
            self._file.close()
        except OSError:
            pass
        path, day, part = self._cur.path, self._cur.day, self._cur.part
        self._file, self._cur, self._cur_size = None, None, 0
        try:
            size = path.stat().st_size
        except OSError:
            return
        self._closed.append(RecordingFile(path, day, part, size))
        self._closed_bytes += size

    # ---- retention --------------------------------------------------------------------
    def _delete_oldest(self, reason: str) -> bool:
        oldest = self._closed.popleft()
        self._closed_bytes -= oldest.size
        try:
            oldest.path.unlink(missing_ok=True)
        except OSError as exc:
            self.metrics.inc("recorder_retention_failures_total")
            log.warning("retention could not delete %s: %s", oldest.path, exc)
            return False
        self.metrics.inc("recorder_files_deleted_total", reason=reason)
        self.metrics.inc("recorder_bytes_deleted_total", oldest.size, reason=reason)
        log.info("recording retention (%s): deleted %s (%d bytes)", reason, oldest.path.name, oldest.size)
        return True

    def _apply_age_bound(self) -> None:
        days = self.config.max_days
        if not days:
            return
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        cutoff = (today - timedelta(days=days - 1)).isoformat()
        while self._closed and self._closed[0].day < cutoff:
            self._delete_oldest("max_days")

    def _apply_size_bound(self) -> None:
        budget = self.config.max_total_bytes
        if not budget:
            return
        while self._closed and self._closed_bytes + self._cur_size > budget:
            self._delete_oldest("max_total_bytes")

    def _publish_gauges(self) -> None:
        m = self.metrics
        m.set("recorder_bytes", self._closed_bytes + self._cur_size)
        m.set("recorder_files", len(self._closed) + (1 if self._cur is not None else 0))
        m.set("recorder_queue_depth", len(self._queue))

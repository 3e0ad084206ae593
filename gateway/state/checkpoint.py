"""Checkpoints of per-device state in the state dir, with the ingest-log position they reflect.

``CheckpointStore`` is the SQLite file (``<state_dir>/checkpoint.sqlite``, WAL,
``synchronous=FULL``): one row per device (its ``gateway.state.codec`` blob) and a meta
row with the ingest-log sequence number the rows reflect and the model they were dumped
under. A write is one transaction, so a kill during a checkpoint write leaves the previous
checkpoint whole. A file SQLite cannot read is moved aside (``.corrupt-<time>``) and the
gateway starts without state (counted, logged), never stays down.

``Checkpointer`` runs on the pipeline thread: it remembers which devices changed
(``mark``), ``capture(seq)`` encodes only those (``gateway.state.tree.pack``, about 50 µs
each; the pipeline pauses for the encoding only) into ``BlobBuffer`` (anonymous memory
maps, not the malloc heap) and hands them to its writer thread, which commits them; the
previous checkpoint's rows of the other devices stay valid, because they did not change.
Memory: with 10,000 devices changing every minute a capture is about 40 MB of blobs; in
memory maps it goes back to the system when the write is done (as Python objects or
heap bytes it stayed in the process as fragmented free memory: +87 MB RSS after the
first checkpoint, bench/RESULTS.md 22). One write at a time: while one runs, a due capture waits.
A failed write (disk full) is kept and merged into the next one. ``on_written(seq)`` runs
after each commit (the ingest log then deletes the segments the checkpoint covers).
"""

from __future__ import annotations

import logging
import mmap
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.metrics import Metrics
from gateway.state.codec import DeviceStateCodec, RestoreReport
from gateway.state.tree import pack

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices(device_id TEXT PRIMARY KEY, last_seen REAL NOT NULL, blob BLOB NOT NULL);
"""


@dataclass
class CheckpointMeta:
    seq: int
    model_key: str
    model_ref: str
    written_at: float


class CheckpointStore:
    def __init__(self, path: Path, metrics: Metrics) -> None:
        self.path = Path(path)
        self.metrics = metrics
        try:
            self._conn = self._open()
            self.meta()  # reads through the file: a damaged one fails here, not later
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("checkpoint %s is unreadable (%s); moved to %s, starting without device state",
                      self.path, exc, aside)
            metrics.inc("checkpoint_errors_total", op="open_corrupt")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{aside}{suffix}")
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA cache_size=-256")  # KiB; written, rarely read: 2 MB by default, kept for good (bench/RESULTS.md 22)
        conn.executescript(_SCHEMA)
        conn.execute("SELECT count(*) FROM devices").fetchone()
        return conn

    def meta(self) -> CheckpointMeta | None:
        rows = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if "seq" not in rows:
            return None
        return CheckpointMeta(int(rows["seq"]), rows.get("model_key", ""), rows.get("model_ref", "?"),
                              float(rows.get("written_at", 0.0)))

    def devices(self) -> Iterator[bytes]:
        """Device blobs, least recently seen first."""
        for (blob,) in self._conn.execute("SELECT blob FROM devices ORDER BY last_seen"):
            yield bytes(blob)

    def write(self, seq: int, model_key: str, model_ref: str, rows: dict[str, tuple[float, bytes | memoryview]],
              deletes: set[str]) -> None:
        """One transaction: upsert ``rows`` (id -> (last seen, blob)), delete ``deletes``, move
        the position to ``seq``. Raises sqlite3.Error (nothing changed) on failure."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO devices(device_id, last_seen, blob) VALUES (?, ?, ?)",
                             [(k, ts, blob) for k, (ts, blob) in rows.items()])
            conn.executemany("DELETE FROM devices WHERE device_id = ?", [(k,) for k in deletes])
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                             [("seq", str(seq)), ("model_key", model_key), ("model_ref", model_ref),
                              ("written_at", repr(time.time()))])
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def close(self) -> None:
        self._conn.close()


class BlobBuffer:
    """Device blobs copied into anonymous memory maps of ``chunk_bytes`` each (a blob
    larger than that gets a map of its own); ``add`` returns a read-only view of the copy.
    The maps are unmapped when the last view of them is dropped, so a checkpoint's blobs
    leave no freed-but-kept memory in the process. One thread fills it; the views may
    then be read on another."""

    def __init__(self, chunk_bytes: int = 1 << 20) -> None:
        self.chunk_bytes = chunk_bytes
        self._map: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._used = 0
        self.nbytes = 0

    def add(self, blob: bytes) -> memoryview:
        n = len(blob)
        self.nbytes += n
        if n > self.chunk_bytes:  # a map of its own; the current one stays open for the next blobs
            own = mmap.mmap(-1, n)
            own.write(blob)
            return memoryview(own).toreadonly()
        if self._map is None or self._view is None or self._used + n > len(self._map):
            self._map = mmap.mmap(-1, self.chunk_bytes)
            self._view = memoryview(self._map)
            self._used = 0
        start, self._used = self._used, self._used + n
        self._view[start:self._used] = blob
        return self._view[start:self._used].toreadonly()


@dataclass
class _Batch:
    seq: int
    model_key: str
    model_ref: str
    rows: dict[str, tuple[float, bytes | memoryview]]  # (last seen, the device's blob)
    deletes: set[str]


class Checkpointer:
    """See the module docstring. ``interval_s`` <= 0 checkpoints only at stop."""

    def __init__(self, store: CheckpointStore, codec: DeviceStateCodec, metrics: Metrics, interval_s: float,
                 on_written: Callable[[int], None] | None = None,
                 barriers: list[Callable[[], object]] | None = None) -> None:
        """``barriers`` run before each capture: what must be durable elsewhere before the
        position may pass it (the telemetry of the readings the checkpoint covers); one
        returning False postpones the capture (counted, ``checkpoint_errors_total{op=barrier}``)."""
        self.store = store
        self.barriers = list(barriers or ())
        self.codec = codec
        self.metrics = metrics
        self.interval_s = interval_s
        self.on_written = on_written
        self.dirty: set[str] = set()
        codec.windows.drain_evicted()  # starts tracking evictions (also those a restore causes)
        self.seq = 0  # the position of the last capture
        self._last = time.monotonic()
        self._failed: _Batch | None = None
        self._lock = threading.Lock()  # guards _failed between the writer and the pipeline
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self._busy = threading.Event()  # a batch is queued or being written
        self._writer = threading.Thread(target=self._write_loop, name="checkpoint-writer", daemon=True)
        self._writer.start()
        for name, text in (("checkpoints_total", "Checkpoints committed"),
                           ("checkpoint_devices_written_total", "Device rows written by checkpoints"),
                           ("checkpoint_errors_total", "Checkpoint failures, by op"),
                           ("checkpoint_seconds_total", "Time spent dumping and writing checkpoints")):
            metrics.describe(name, text)

    # ---- start ----------------------------------------------------------------------
    def restore(self) -> tuple[int, RestoreReport | None]:
        """Install the stored devices; returns (log position, report) — (0, None) without one."""
        meta = self.store.meta()
        if meta is None:
            return 0, None
        started = time.perf_counter()
        report = RestoreReport()
        key = self.codec.model_key()
        for blob in self.store.devices():
            self.codec.restore_device(blob, report, key)
        if meta.model_key != key:
            report.notes.append(f"checkpoint from model {meta.model_ref} ({meta.model_key}), serving "
                                f"{self.codec.model_ref()} ({key}): kept windows, standardisation, last seen and "
                                f"alert-policy state; score profiles recalibrate")
        self.seq = meta.seq
        self.metrics.set("checkpoint_restore_seconds", time.perf_counter() - started)
        self.metrics.set("checkpoint_restored_devices", report.devices)
        return meta.seq, report

    # ---- pipeline thread ------------------------------------------------------------
    def mark(self, device_id: str) -> None:
        self.dirty.add(device_id)

    def due(self) -> bool:
        return self.interval_s > 0 and time.monotonic() - self._last >= self.interval_s and not self._busy.is_set()

    def capture(self, seq: int, wait: bool = False) -> bool:
        """Dump the changed devices as of log position ``seq`` (every reading up to it handled,
        nothing pending) and write them (in the writer thread; ``wait``: here, now). False when
        a write is still running (the dirty set is kept for the next capture)."""
        if not wait and self._busy.is_set():
            return False
        started = time.perf_counter()
        self._last = time.monotonic()
        for barrier in self.barriers:
            if barrier() is False:  # e.g. telemetry not yet on disk: the position may not pass it
                self.metrics.inc("checkpoint_errors_total", op="barrier")
                log.warning("checkpoint at log position %d postponed: %s did not complete", seq,
                            getattr(barrier, "__qualname__", barrier))
                return False
        key = self.codec.model_key()
        dirty, self.dirty = self.dirty | self.codec.windows.drain_evicted(), set()
        rows: dict[str, tuple[float, bytes | memoryview]] = {}
        deletes: set[str] = set()
        blobs = BlobBuffer()
        for device_id in dirty:
            tree = self.codec.device_tree(device_id, key)
            if tree is None:
                deletes.add(device_id)
            else:  # encoded here (the pipeline's pause); the writer thread only commits
                window = self.codec.windows.get(device_id)
                rows[device_id] = (window.last_timestamp if window is not None else 0.0, blobs.add(pack(tree)))
        batch = _Batch(seq, key, self.codec.model_ref(), rows, deletes)
        with self._lock:
            failed, self._failed = self._failed, None
        if failed is not None:  # a write that failed: its rows are still the latest for devices not in this one
            for k, v in failed.rows.items():
                if k not in rows and k not in deletes:
                    rows[k] = v
            deletes |= {k for k in failed.deletes if k not in rows}
        self.metrics.inc("checkpoint_seconds_total", time.perf_counter() - started)
        self.seq = seq
        if wait:
            self._queue.join()
            self._write(batch)
            return True
        self._busy.set()  # cleared by the writer once this batch is committed (or kept as failed)
        self._queue.put(batch)
        return True

    def close(self, seq: int | None = None) -> None:
        """Final checkpoint (when ``seq`` is given), then stop the writer and the store."""
        try:
            if seq is not None:
                self.capture(seq, wait=True)
        finally:
            self._queue.put(None)
            self._writer.join(30)
            self.store.close()

    # ---- writer thread --------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                self._write(batch)
            finally:
                batch = None  # its blobs (memory maps) go now, not when the next batch comes
                self._busy.clear()
                self._queue.task_done()

    def _write(self, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            self.store.write(batch.seq, batch.model_key, batch.model_ref, batch.rows, batch.deletes)
        except sqlite3.Error as exc:
            self.metrics.inc("checkpoint_errors_total", op="write")
            log.error("checkpoint at log position %d not written (%s); kept for the next one", batch.seq, exc)
            with self._lock:
                if self._failed is None:
                    self._failed = batch
            return
        self.metrics.inc("checkpoints_total")
        self.metrics.inc("checkpoint_devices_written_total", len(batch.rows))
        self.metrics.inc("checkpoint_seconds_total", time.perf_counter() - started)
        self.metrics.set("checkpoint_seq", batch.seq)
        if self.on_written is not None:
            try:
                self.on_written(batch.seq)
            except OSError as exc:
                log.warning("ingest-log retention after checkpoint %d failed: %s", batch.seq, exc)

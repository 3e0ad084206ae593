"""Checkpoints of per-device state in the state dir, with the ingest-log position they reflect.

``CheckpointStore`` is the SQLite file (``<state_dir>/checkpoint.sqlite``, WAL,
``synchronous=FULL``): one row per device (its ``gateway.state.codec`` blob) and a meta
row with the ingest-log sequence number the rows reflect and the model they were dumped
under. A write is one transaction, so a kill during a checkpoint write leaves the previous
checkpoint whole. A file SQLite cannot read is moved aside (``.corrupt-<time>``) and the
gateway starts without state (counted, logged), never stays down.

``Checkpointer`` runs on the pipeline thread: it remembers which devices changed
(``mark``), ``capture(seq)`` encodes only those (``gateway.state.tree.pack``, about 50 µs
each; the pipeline pauses for the encoding) into ``BlobBuffer`` (anonymous memory maps,
not the malloc heap), one slice of about ``slice_bytes`` (256 KiB, about 67 devices) at a
time, and hands each slice to its writer thread, which inserts it into one open
transaction (SQLite's page cache spills to the WAL file) and commits after the last; the
previous checkpoint's rows of the other devices stay valid, because they did not change.
Memory: with 10,000 devices changing every minute a checkpoint is about 40 MB of blobs; at
most ``_QUEUED`` slices wait for the writer (capture blocks on the queue), so 1-2 MB of
them are in memory at once, each slice's maps unmapped once SQLite has it. Holding all of
them at once was the 183-197 MB peak of bench/RESULTS.md 22 and 27; as Python objects or
heap bytes they stayed in the process as fragmented free memory (+87 MB RSS after the
first checkpoint, RESULTS 22). One checkpoint at a time: while one is written, a due
capture waits. A failed write (disk full) is rolled back whole and its devices are
encoded again by the next capture (their rows in the file are older than its position).
``on_written(seq)`` runs after each commit (the ingest log then deletes the segments the
checkpoint covers).
"""

from __future__ import annotations

import logging
import mmap
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.metrics import Metrics
from gateway.state.codec import DeviceStateCodec, RestoreReport
from gateway.state.tree import pack

log = logging.getLogger(__name__)

_QUEUED = 2  # slices waiting for the writer: the blobs in memory are (_QUEUED + 2) * slice_bytes at most

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
        self.begin()
        try:
            self.put_rows([(k, ts, blob) for k, (ts, blob) in rows.items()])
            self.finish(seq, model_key, model_ref, deletes)
        except BaseException:
            self.rollback()
            raise

    # one checkpoint as a transaction written in slices: begin, put_rows..., finish (or rollback)
    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def put_rows(self, rows: list[tuple[str, float, bytes | memoryview]]) -> None:
        """Upsert (id, last seen, blob) rows inside the open transaction; SQLite spills what
        exceeds its page cache to the WAL file, so a slice's blobs can go once this returns."""
        self._conn.executemany("INSERT OR REPLACE INTO devices(device_id, last_seen, blob) VALUES (?, ?, ?)", rows)

    def finish(self, seq: int, model_key: str, model_ref: str, deletes: set[str]) -> None:
        """Delete ``deletes``, move the position to ``seq`` and commit the open transaction."""
        conn = self._conn
        conn.executemany("DELETE FROM devices WHERE device_id = ?", [(k,) for k in deletes])
        conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                         [("seq", str(seq)), ("model_key", model_key), ("model_ref", model_ref),
                          ("written_at", repr(time.time()))])
        conn.execute("COMMIT")

    def rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

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
    """One checkpoint: its position, and every device in it (re-marked dirty if its write fails)."""
    seq: int
    model_key: str
    model_ref: str
    ids: set[str]
    deletes: set[str] = field(default_factory=set)
    begun: bool = False  # the writer opened its transaction
    failed: bool = False  # a slice's write failed (the rest is skipped) or the capture raised (rolled back)


@dataclass
class _Slice:
    batch: _Batch
    rows: list[tuple[str, float, bytes | memoryview]]  # (device, last seen, its blob in this slice's BlobBuffer)
    last: bool  # the batch's deletes and position go with it, then the commit


class Checkpointer:
    """See the module docstring. ``interval_s`` <= 0 checkpoints only at stop. ``slice_bytes``:
    blobs encoded before a slice goes to the writer (at most ``_QUEUED`` slices wait for it)."""

    def __init__(self, store: CheckpointStore, codec: DeviceStateCodec, metrics: Metrics, interval_s: float,
                 on_written: Callable[[int], None] | None = None,
                 barriers: list[Callable[[], object]] | None = None, slice_bytes: int = 1 << 18) -> None:
        """``barriers`` run before each capture: what must be durable elsewhere before the
        position may pass it (the telemetry of the readings the checkpoint covers); one
        returning False postpones the capture (counted, ``checkpoint_errors_total{op=barrier}``)."""
        self.store = store
        self.barriers = list(barriers or ())
        self.codec = codec
        self.metrics = metrics
        self.interval_s = interval_s
        self.on_written = on_written
        self.slice_bytes = slice_bytes
        self.dirty: set[str] = set()
        codec.windows.drain_evicted()  # starts tracking evictions (also those a restore causes)
        self.seq = 0  # the position of the last capture
        self._last = time.monotonic()
        self._failed_ids: set[str] = set()  # devices of a write that failed: encoded again by the next capture
        self._lock = threading.Lock()  # guards _failed_ids between the writer and the pipeline
        self._queue: queue.Queue[_Slice | None] = queue.Queue(maxsize=_QUEUED)
        self._busy = threading.Event()  # a capture's slices are queued or being written
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
        nothing pending) and write them (in the writer thread, which commits slices of
        ``slice_bytes`` into one transaction while the next slice is encoded; ``wait``: here,
        now). False when a write is still running (the dirty set is kept for the next capture)."""
        if not wait and self._busy.is_set():
            return False
        if wait:  # the write in flight first: if it fails, its devices must be in this one
            self._queue.join()
        started = time.perf_counter()
        self._last = time.monotonic()
        for barrier in self.barriers:
            if barrier() is False:  # e.g. telemetry not yet on disk: the position may not pass it
                self.metrics.inc("checkpoint_errors_total", op="barrier")
                log.warning("checkpoint at log position %d postponed: %s did not complete", seq,
                            getattr(barrier, "__qualname__", barrier))
                return False
        key = self.codec.model_key()
        with self._lock:  # a failed write's devices: their rows in the file are older than the position
            failed, self._failed_ids = self._failed_ids, set()
        dirty, self.dirty = self.dirty | self.codec.windows.drain_evicted() | failed, set()
        batch = _Batch(seq, key, self.codec.model_ref(), dirty)
        if wait:
            send: Callable[[_Slice], None] = self._write
        else:
            self._busy.set()  # cleared by the writer once the last slice is committed (or the batch failed)
            send = self._queue.put  # blocks while _QUEUED slices wait: the blobs in memory stay bounded
        rows: list[tuple[str, float, bytes | memoryview]] = []
        blobs = BlobBuffer(self.slice_bytes)
        waited = 0.0  # blocked on the writer (its own time is counted there)
        try:
            for device_id in dirty:
                tree = self.codec.device_tree(device_id, key)
                if tree is None:
                    batch.deletes.add(device_id)
                    continue
                window = self.codec.windows.get(device_id)  # encoded here (the pipeline's pause)
                rows.append((device_id, window.last_timestamp if window is not None else 0.0, blobs.add(pack(tree))))
                if blobs.nbytes >= self.slice_bytes:
                    t = time.perf_counter()
                    send(_Slice(batch, rows, last=False))
                    waited += time.perf_counter() - t
                    rows, blobs = [], BlobBuffer(self.slice_bytes)
        except BaseException:
            batch.failed = True  # the writer rolls back what it wrote of it; its devices go into the next one
            send(_Slice(batch, [], last=True))
            raise
        self.metrics.inc("checkpoint_seconds_total", time.perf_counter() - started - waited)
        self.seq = seq
        send(_Slice(batch, rows, last=True))
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
            item = self._queue.get()
            last = item is not None and item.last
            try:
                if item is None:
                    return
                self._write(item)
            finally:
                item = None  # its blobs (memory maps) go now, not when the next slice comes
                if last:
                    self._busy.clear()
                self._queue.task_done()

    def _write(self, piece: _Slice) -> None:
        """Write one slice into its batch's transaction (the first opens it, the last commits)."""
        batch = piece.batch
        if batch.failed:
            if piece.last:
                self._give_up(batch)
            return
        started = time.perf_counter()
        try:
            if not batch.begun:
                batch.begun = True
                self.store.begin()
            self.store.put_rows(piece.rows)
            if piece.last:
                self.store.finish(batch.seq, batch.model_key, batch.model_ref, batch.deletes)
        except sqlite3.Error as exc:
            batch.failed = True
            self.metrics.inc("checkpoint_errors_total", op="write")
            log.error("checkpoint at log position %d not written (%s); its devices go into the next one", batch.seq, exc)
            self._give_up(batch)
            return
        finally:
            self.metrics.inc("checkpoint_seconds_total", time.perf_counter() - started)
        if not piece.last:
            return
        self.metrics.inc("checkpoints_total")
        self.metrics.inc("checkpoint_devices_written_total", len(batch.ids) - len(batch.deletes))
        self.metrics.set("checkpoint_seq", batch.seq)
        if self.on_written is not None:
            try:
                self.on_written(batch.seq)
            except OSError as exc:
                log.warning("ingest-log retention after checkpoint %d failed: %s", batch.seq, exc)

    def _give_up(self, batch: _Batch) -> None:
        """Roll back what was written of ``batch`` (once); its devices are encoded again by the next capture."""
        if batch.begun:
            batch.begun = False
            self.store.rollback()
        with self._lock:
            self._failed_ids |= batch.ids

"""The ingest log: an append-only write-ahead log of accepted uplinks in the state dir.

Why: a QoS 1 uplink is acknowledged to the broker only once it is on disk here, so a crash
(SIGKILL, power loss) loses nothing the broker handed over; a restart replays the records
after the checkpoint's position (``gateway.state.checkpoint``).

Layout: ``<state_dir>/ingest-log/seg-<first seq, 20 digits>.wal``, one file per segment,
each a run of records ``[body length u32][crc32 u32][seq u64][body]`` (little endian; the
CRC covers seq and body). The body is the uplink as compact JSON (payload in base64).
Sequence numbers rise by one per record across segments (gaps are allowed: records of a
write that failed are never reused).

Contract:

- ``write(uplinks)`` numbers, appends and fsyncs one group of records (a received chunk):
  one ``write`` and one ``fsync`` per group, not per record. On success every record of the
  group is durable and carries its ``seq``; on OSError (disk full, I/O error) the file is
  cut back to its last durable length and nothing of the group counts as written.
- Opening scans every segment; a torn tail (a record cut short or with a bad CRC, what a
  power loss mid-fsync leaves) is cut off the last segment and counted
  (``ingest_log_truncated_bytes_total``); damage inside an older segment ends that segment
  there (counted, ``ingest_log_corrupt_segments_total``).
- ``release_through(seq)``: segments whose records are all <= seq (a checkpoint reflects
  them) are deleted, except the newest ``keep_segments``; that is the retention.
- ``records(after)`` reads the records with seq > after back from disk, in order.

One writer at a time (callers hold their own lock or use ``gateway.ingest.accept``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.metrics import Metrics
from gateway.types import RadioMeta, RawUplink

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<IIQ")
MAX_RECORD_BYTES = 1 << 20
"""A body longer than this is damage, not a record (uplinks are at most 64 KiB)."""


def encode_uplink(up: RawUplink) -> bytes:
    """The record body of one uplink (compact JSON; inverse ``decode_uplink_record``)."""
    doc: dict[str, Any] = {"d": up.device_id, "t": up.received_at, "p": base64.b64encode(up.payload).decode("ascii")}
    if up.f_port is not None:
        doc["fp"] = up.f_port
    if up.f_cnt is not None:
        doc["fc"] = up.f_cnt
    radio = up.radio.as_dict()
    if radio:
        doc["r"] = radio
    if up.decoded is not None:
        doc["o"] = up.decoded
    if up.device_name is not None:
        doc["n"] = up.device_name
    if up.source:
        doc["s"] = up.source
    if up.shape:
        doc["sh"] = up.shape
    if up.dedup_id is not None:
        doc["id"] = up.dedup_id
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_uplink_record(body: bytes, seq: int) -> RawUplink:
    doc = json.loads(body)
    return RawUplink(device_id=doc["d"], received_at=doc["t"], payload=base64.b64decode(doc["p"]),
                     f_port=doc.get("fp"), f_cnt=doc.get("fc"), radio=RadioMeta(**doc.get("r", {})),
                     decoded=doc.get("o"), device_name=doc.get("n"), source=doc.get("s", ""),
                     shape=doc.get("sh", ""), dedup_id=doc.get("id"), seq=seq)


def _segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:020d}.wal"


def _scan(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(offset after the record, seq, body) of each good record, from the start; stops at
    the first damaged or cut record."""
    data = path.read_bytes()
    pos, n = 0, len(data)
    while pos + _HEAD.size <= n:
        length, crc, seq = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if length > MAX_RECORD_BYTES or end > n:
            return
        body = data[pos + _HEAD.size:end]
        if zlib.crc32(body, zlib.crc32(data[pos + 8:pos + 16])) != crc:
            return
        yield end, seq, body
        pos = end


class IngestLog:
    """See the module docstring."""

    def __init__(self, directory: Path, metrics: Metrics, *, segment_bytes: int = 8 << 20,
                 keep_segments: int = 2, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.metrics = metrics
        self.segment_bytes = segment_bytes
        self.keep_segments = max(1, keep_segments)
        self.fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), oldest first
        self._fd: int | None = None
        self._closed = False
        self._size = 0  # durable length of the active segment
        self.next_seq = 1
        for name in ("ingest_log_records_total", "ingest_log_syncs_total", "ingest_log_errors_total",
                     "ingest_log_truncated_bytes_total", "ingest_log_corrupt_segments_total"):
            metrics.describe(name, name.replace("_", " "))
        self._recover()

    # ---- opening --------------------------------------------------------------------
    def _recover(self) -> None:
        found = sorted((int(p.name[4:24]), p) for p in self.directory.glob("seg-*.wal")
                       if p.name[4:24].isdigit() and len(p.name) == 28)
        last_seq = 0
        for i, (first, path) in enumerate(found):
            good = 0
            for end, seq, _ in _scan(path):
                good, last_seq = end, max(last_seq, seq)
            size = path.stat().st_size
            if good < size:
                if i == len(found) - 1:
                    self.metrics.inc("ingest_log_truncated_bytes_total", size - good)
                    log.warning("ingest log %s: cut %d bytes of a torn last write", path.name, size - good)
                    with open(path, "r+b") as fh:
                        fh.truncate(good)
                        os.fsync(fh.fileno())
                else:
                    self.metrics.inc("ingest_log_corrupt_segments_total")
                    log.error("ingest log %s is damaged at byte %d; later records of it are skipped", path.name, good)
            last_seq = max(last_seq, first - 1)
        self._segments = found
        self.next_seq = last_seq + 1
        if found:
            first, path = found[-1]
            self._open_active(path)
        else:
            self._rotate()

    def _open_active(self, path: Path) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        path = self.directory / _segment_name(self.next_seq)
        self._open_active(path)
        self._segments.append((self.next_seq, path))
        if self.fsync:
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    # ---- writing --------------------------------------------------------------------
    def write(self, uplinks: list[RawUplink]) -> None:
        """Append and fsync ``uplinks`` as one group; each gets its ``seq``. On OSError
        nothing of the group is kept (the file is cut back) and no seq is set."""
        if not uplinks:
            return
        if self._closed:
            raise OSError("ingest log is closed")
        if self._fd is None:  # the last write failed: start again from the file as it is
            self._open_active(self._segments[-1][1])
        if self._size >= self.segment_bytes:
            self._rotate()
        buf = bytearray()
        seq = self.next_seq
        seqs = []
        for up in uplinks:
            body = encode_uplink(up)
            head = struct.pack("<Q", seq)
            buf += _HEAD.pack(len(body), zlib.crc32(body, zlib.crc32(head)), seq)
            buf += body
            seqs.append(seq)
            seq += 1
        self.next_seq = seq  # never reused, also when the write fails
        fd = self._fd
        assert fd is not None  # opened above
        try:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            self.metrics.inc("ingest_log_errors_total", reason=_reason(exc))
            self._fd = None
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                pass
            os.close(fd)
            raise
        self._size += len(buf)
        for up, s in zip(uplinks, seqs, strict=True):
            up.seq = s
        self.metrics.inc("ingest_log_records_total", len(uplinks))
        self.metrics.inc("ingest_log_syncs_total")

    # ---- reading and retention ------------------------------------------------------
    def records(self, after: int = 0) -> Iterator[RawUplink]:
        """Every good record with seq > ``after``, oldest first, read from disk."""
        segs = self._segments
        for i, (_, path) in enumerate(segs):
            nxt = segs[i + 1][0] if i + 1 < len(segs) else None
            if nxt is not None and nxt - 1 <= after:
                continue
            try:
                for _, seq, body in _scan(path):
                    if seq > after:
                        yield decode_uplink_record(body, seq)
            except FileNotFoundError:
                continue

    def release_through(self, seq: int) -> int:
        """Delete segments whose records are all <= ``seq``, keeping the newest
        ``keep_segments``; returns how many were deleted."""
        deleted = 0
        while len(self._segments) > self.keep_segments and self._segments[1][0] - 1 <= seq:
            _, path = self._segments.pop(0)
            path.unlink(missing_ok=True)
            deleted += 1
        return deleted

    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _reason(exc: OSError) -> str:
    import errno

    return {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EIO: "io_error"}.get(exc.errno or 0, "os_error")

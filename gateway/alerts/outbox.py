"""The durable outbox: every alert is on disk before any handler sees it.

SQLite in WAL mode (stdlib ``sqlite3``). One ``entries`` row per alert (or telemetry
reading) and one ``deliveries`` row per (handler, entry), written in one transaction, so
each handler acknowledges independently; an entry is purged when its last delivery row
is acknowledged.

Durability: ``synchronous=FULL``. In WAL mode NORMAL only syncs at checkpoints, so a
power cut (common on edge boxes) can roll back the last commits: alerts the policy already
counted as raised would vanish without a trace. FULL fsyncs the WAL at every commit, which
costs one fsync per append/ack (milliseconds on an SD card, far below alert rates). A crash
between a delivery and its ack only repeats the delivery (at-least-once; receivers drop the
duplicate by the alert's idempotency key).

Order: per handler, strictly oldest first within a priority (alerts before telemetry); a
failed delivery (``nack``) backs off exponentially and holds back the rows behind it, so a
receiver never sees a clear before its raise.

Replay: ``replay=True`` on an entry delivered after a failure of that handler, or after a
restart (everything found on disk at open).

Disk budget (``max_bytes``, counting payload bytes plus a fixed per-row overhead): when an
append does not fit, the oldest telemetry is evicted first; if that is not enough a new
telemetry entry or alert is refused. Stored alerts are never evicted. SQLite's own "database
or disk is full" errors are caught the same way. Every drop is counted in
``outbox_dropped_total{reason}``; the outbox never raises on a full disk.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gateway.alerts.outbox_db import (
    ALERT,
    DELIVERY_OVERHEAD,
    ENTRY_OVERHEAD,
    TELEMETRY,
    Evicted,
    OutboxEntry,
    Recovered,
    decode_entry,
    evict_oldest_telemetry,
    evict_telemetry_share,
    insert_entries,
    is_full,
    open_database,
)
from gateway.metrics import Metrics
from gateway.types import Alert, Reading

log = logging.getLogger(__name__)

class Outbox:
    """Durable per-handler queue of alerts and telemetry; thread-safe (one lock, one connection).

    ``handlers``: names of the configured handlers; each new entry gets one delivery row per
    handler. Delivery rows of handlers no longer configured are purged at open (counted).
    ``hard_limit_bytes`` caps the database file itself (SQLite ``max_page_count``); SQLite
    then reports "database or disk is full", handled like a real full disk.
    """

    def __init__(self, path: str | os.PathLike[str], handlers: Iterable[str], max_bytes: int,
                 metrics: Metrics | None = None, *, base_backoff_s: float = 1.0,
                 max_backoff_s: float = 300.0, hard_limit_bytes: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.handlers = tuple(dict.fromkeys(handlers))
        self.max_bytes = max_bytes
        self.metrics = metrics or Metrics()
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._failing: set[str] = set()
        self._restart_boundary = 0  # entries up to this id were on disk at open: replays
        self._last_warn: dict[str, float] = {}
        self._bytes = 0
        self._counts = {ALERT: 0, TELEMETRY: 0}
        self._pending: dict[tuple[str, int], int] = {}
        self.metrics.describe("outbox_dropped_total", "Outbox entries dropped or refused, by reason")
        self.metrics.describe("outbox_errors_total", "SQLite errors in the outbox, by operation")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn, found = open_database(self.path, hard_limit_bytes, self.handlers, self.metrics)
        self._take_over(found)

    # ------------------------------------------------------------------ open / close

    def _take_over(self, found: Recovered) -> None:
        """Account for what was on disk: everything is a replay, due now (outbox_db.recover)."""
        self._restart_boundary = found.restart_boundary
        self._bytes = found.stored_bytes
        self._counts.update(found.entries_by_priority)
        self._pending.update(found.pending)
        self._publish_gauges()

    def close(self) -> None:
        """Close the database; idempotent.

        Afterwards ``append``/``ack``/``nack`` log and count (``outbox_errors_total``) instead
        of writing, so a straggling delivery thread cannot crash; what it did not acknowledge
        is replayed after the next start.
        """
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (no arguments, must be quick) after every successful append."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ append

    def append(self, alert: Alert) -> int | None:
        """Store one alert durably for every handler; return its id, or None when refused.

        A refusal (disk budget exhausted by alerts, or the disk/database full) is counted in
        ``outbox_dropped_total{reason=alert_refused_budget|alert_refused_disk_full}`` and logged;
        it never raises for a full disk.
        """
        payload = json.dumps(alert.as_dict(), separators=(",", ":"), default=str)
        ids = self._append(ALERT, [(payload, alert.timestamp)], self.handlers)
        return ids[0] if ids else None

    def append_telemetry(self, reading: Reading, handlers: Iterable[str] | None = None) -> int | None:
        """Store one reading for ``handlers`` (default: all) at low priority; None when refused."""
        ids = self.append_telemetry_many([reading], handlers)
        return ids[0] if ids else None

    def append_telemetry_many(self, readings: Iterable[Reading],
                              handlers: Iterable[str] | None = None) -> list[int]:
        """Store readings for ``handlers`` (default: all) at low priority, in one transaction
        (one fsync for the batch); return their ids, or [] when the batch was refused (every
        reading of it counted in ``outbox_dropped_total{reason=telemetry_refused_*}``)."""
        wanted = self.handlers if handlers is None else tuple(h for h in handlers if h in self.handlers)
        items = [(json.dumps(r.as_dict(), separators=(",", ":")), r.timestamp) for r in readings]
        if not wanted or not items:
            return []
        return self._append(TELEMETRY, items, wanted)

    def _append(self, prio: int, items: list[tuple[str, float]], handlers: tuple[str, ...]) -> list[int]:
        kind = "alert" if prio == ALERT else "telemetry"
        rows = [(payload, created_at, len(payload.encode("utf-8")) + ENTRY_OVERHEAD
                 + DELIVERY_OVERHEAD * len(handlers)) for payload, created_at in items]
        with self._lock:
            ids = self._insert_guarded(prio, rows, handlers, kind)
            if not ids:
                return []
            self._publish_gauges()
        for callback in list(self._listeners):
            callback()
        return ids

    def _insert_guarded(self, prio: int, rows: list[tuple[str, float, int]], handlers: tuple[str, ...],
                        kind: str) -> list[int]:
        """``_insert`` with SQLite errors handled: a full disk evicts telemetry and retries once.
        Every refused row is counted once, by reason."""
        retried = False
        while True:
            try:
                ids = self._insert(prio, rows, handlers)
            except sqlite3.Error as exc:
                self._rollback()
                if not is_full(exc):
                    self.metrics.inc("outbox_errors_total", op="append")
                    self.metrics.inc("outbox_dropped_total", len(rows), reason=f"{kind}_refused_error")
                    log.error("outbox append failed, %s refused: %s", kind, exc)
                    return []
                if retried or not self._evict_telemetry_for_disk():
                    self.metrics.inc("outbox_dropped_total", len(rows), reason=f"{kind}_refused_disk_full")
                    self._warn_throttled(f"full_{kind}", f"outbox: database or disk full, {kind} refused")
                    return []
                retried = True
                continue
            if ids is None:
                self.metrics.inc("outbox_dropped_total", len(rows), reason=f"{kind}_refused_budget")
                self._warn_throttled(f"budget_{kind}", f"outbox disk budget ({self.max_bytes} bytes) "
                                     f"exhausted by undelivered alerts: new {kind} refused")
                return []
            return ids

    def _insert(self, prio: int, rows: list[tuple[str, float, int]],
                handlers: tuple[str, ...]) -> list[int] | None:
        """One transaction: make room (evicting telemetry), insert the entries and their
        delivery rows. None (nothing written, nothing evicted) when the budget cannot fit them."""
        conn = self._conn
        size = sum(r[2] for r in rows)
        conn.execute("BEGIN IMMEDIATE")
        over = self._bytes + size - self.max_bytes
        evicted = evict_oldest_telemetry(self._conn, over) if over > 0 else Evicted()
        if evicted.freed < over:
            conn.execute("ROLLBACK")
            return None
        ids = insert_entries(conn, prio, rows, {h: h in self._failing for h in handlers})
        conn.execute("COMMIT")
        self._account_evicted(evicted)
        self._bytes += size
        self._counts[prio] += len(ids)
        for h in handlers:
            self._pending[(h, prio)] = self._pending.get((h, prio), 0) + len(ids)
        return ids

    def _account_evicted(self, ev: Evicted) -> None:
        if not ev.entries:
            return
        for handler, n in ev.per_handler.items():
            self._pending[(handler, TELEMETRY)] -= n
        self._counts[TELEMETRY] -= ev.entries
        self._bytes -= ev.freed
        self.metrics.inc("outbox_dropped_total", ev.entries, reason="telemetry_evicted")
        self._warn_throttled("evict", "outbox full: evicting the oldest telemetry to make room "
                             "(see outbox_dropped_total{reason=telemetry_evicted})")

    def _evict_telemetry_for_disk(self) -> bool:
        """After SQLITE_FULL: drop a quarter of the stored telemetry (at least one). True if any."""
        if not self._counts[TELEMETRY]:
            return False
        try:
            ev = evict_telemetry_share(self._conn, max(1, self._counts[TELEMETRY] // 4))
        except sqlite3.OperationalError as exc:
            self._rollback()
            self.metrics.inc("outbox_errors_total", op="evict")
            log.error("outbox: could not evict telemetry on a full disk: %s", exc)
            return False
        self._account_evicted(ev)
        return ev.entries > 0

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("outbox rollback failed: %s", exc)

    # ------------------------------------------------------------------ delivery side

    def next_batch(self, handler: str, limit: int = 50) -> list[OutboxEntry]:
        """Up to ``limit`` due entries for ``handler``, oldest first (alerts before telemetry).

        Stops at the first entry still backing off, so order is kept. Entries are not removed:
        ``ack`` or ``nack`` each one. Unreadable rows are dropped and counted (corrupt_entry).
        """
        now = self.clock()
        out: list[OutboxEntry] = []
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.entry_id, d.priority, d.attempts, d.next_attempt_at, d.replay, e.payload, e.created_at "
                "FROM deliveries d JOIN entries e ON e.id = d.entry_id "
                "WHERE d.handler = ? ORDER BY d.priority, d.entry_id LIMIT ?", (handler, limit)).fetchall()
        bad: list[int] = []
        for entry_id, prio, attempts, due, replay, payload, created in rows:
            if due > now:
                break
            try:
                out.append(decode_entry(entry_id, prio, payload, attempts,
                                        bool(replay or entry_id <= self._restart_boundary), created))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("outbox entry %d unreadable, dropped: %s", entry_id, exc)
                bad.append(entry_id)
        if bad:
            self.metrics.inc("outbox_dropped_total", len(bad), reason="corrupt_entry")
            self.ack(handler, bad)
        return out

    def next_due(self, handler: str) -> float | None:
        """Clock time at which ``handler``'s oldest entry is due (<= now: due), None if empty."""
        with self._lock:
            row = self._conn.execute("SELECT next_attempt_at FROM deliveries WHERE handler = ? "
                                     "ORDER BY priority, entry_id LIMIT 1", (handler,)).fetchone()
        return None if row is None else float(row[0])

    def ack(self, handler: str, ids: Iterable[int]) -> None:
        """Mark entries delivered to ``handler``; an entry is purged when no handler needs it.

        A database error is logged and counted (the entries are then delivered again later).
        """
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            conn = self._conn
            marks = ",".join("?" * len(ids))
            try:
                conn.execute("BEGIN IMMEDIATE")
                gone = conn.execute(f"DELETE FROM deliveries WHERE handler = ? AND priority IN (0, 1) "
                                    f"AND entry_id IN ({marks}) RETURNING priority", (handler, *ids)).fetchall()
                purged = conn.execute(f"DELETE FROM entries WHERE id IN ({marks}) AND NOT EXISTS "
                                      f"(SELECT 1 FROM deliveries d WHERE d.entry_id = entries.id) "
                                      f"RETURNING priority, size", ids).fetchall()
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.metrics.inc("outbox_errors_total", op="ack")
                log.error("outbox ack for %s failed (entries will be delivered again): %s", handler, exc)
                return
            for (prio,) in gone:
                self._pending[(handler, prio)] -= 1
            for prio, size in purged:
                self._counts[prio] -= 1
                self._bytes -= size
            self._failing.discard(handler)
            self._publish_gauges()

    def nack(self, handler: str, entry_id: int, error: str) -> float:
        """Record a failed delivery; return the back-off in seconds before the next attempt.

        Back-off doubles per attempt from ``base_backoff_s`` up to ``max_backoff_s``. Every
        entry pending for the handler is marked replay (it is now delivered late).
        """
        with self._lock:
            conn = self._conn
            try:
                row = conn.execute("SELECT attempts FROM deliveries WHERE handler = ? AND priority IN (0, 1) "
                                   "AND entry_id = ?", (handler, entry_id)).fetchone()
                if row is None:
                    return 0.0
                attempts = int(row[0]) + 1
                delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempts - 1))
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error = ? "
                             "WHERE handler = ? AND priority IN (0, 1) AND entry_id = ?",
                             (attempts, self.clock() + delay, error[:500], handler, entry_id))
                conn.execute("UPDATE deliveries SET replay = 1 WHERE handler = ? AND replay = 0", (handler,))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.metrics.inc("outbox_errors_total", op="nack")
                log.error("outbox nack for %s failed: %s", handler, exc)
                return self.base_backoff_s
            self._failing.add(handler)
            return delay

    def retry_now(self, handler: str) -> int:
        """Make every entry of ``handler`` that is backing off due now (its receiver is back).

        Returns how many deliveries were rescheduled; a database error is logged and counted.
        """
        with self._lock:
            try:
                return self._conn.execute("UPDATE deliveries SET next_attempt_at = 0 "
                                          "WHERE handler = ? AND next_attempt_at > 0", (handler,)).rowcount
            except sqlite3.Error as exc:
                self.metrics.inc("outbox_errors_total", op="retry_now")
                log.error("outbox retry_now for %s failed: %s", handler, exc)
                return 0

    def drop(self, handler: str, entry_id: int, reason: str) -> None:
        """Give up on one delivery (a permanent failure): counted, logged, then purged like an ack."""
        self.metrics.inc("outbox_dropped_total", reason=reason)
        log.error("outbox: delivery of entry %d to %s abandoned (%s)", entry_id, handler, reason)
        self.ack(handler, [entry_id])

    # ------------------------------------------------------------------ inspection

    def pending(self, handler: str) -> int:
        """Entries (alerts and telemetry) not yet acknowledged by ``handler``."""
        with self._lock:
            return self._pending.get((handler, ALERT), 0) + self._pending.get((handler, TELEMETRY), 0)

    def stats(self) -> dict[str, Any]:
        """Counts and sizes for ``doctor``, logs and tests."""
        with self._lock:
            files = sum(os.path.getsize(f"{self.path}{s}") for s in ("", "-wal")
                        if os.path.exists(f"{self.path}{s}"))
            return {
                "path": str(self.path), "alerts": self._counts[ALERT], "telemetry": self._counts[TELEMETRY],
                "bytes": self._bytes, "max_bytes": self.max_bytes, "file_bytes": files,
                "pending": {h: self._pending.get((h, ALERT), 0) + self._pending.get((h, TELEMETRY), 0)
                            for h in self.handlers},
                "failing": sorted(self._failing),
            }

    def _warn_throttled(self, key: str, message: str) -> None:
        """Log ``message`` at most once a minute per ``key`` (the counters carry every event)."""
        now = time.monotonic()
        if now - self._last_warn.get(key, -1e9) >= 60.0:
            self._last_warn[key] = now
            log.warning(message)

    def _publish_gauges(self) -> None:
        for h in self.handlers:
            self.metrics.set("alerts_pending", self._pending.get((h, ALERT), 0), handler=h)
            self.metrics.set("telemetry_pending", self._pending.get((h, TELEMETRY), 0), handler=h)
        self.metrics.set("outbox_bytes", self._bytes)
        self.metrics.set("outbox_entries", self._counts[ALERT] + self._counts[TELEMETRY])

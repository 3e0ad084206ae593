"""The outbox's SQLite file: schema, opening it (WAL, ``synchronous=FULL``, an optional hard
size limit) and taking over what a previous run left (see gateway.alerts.outbox for why).

A file SQLite cannot read is moved aside (``<name>.corrupt-<time>``, with its -wal/-shm)
and an empty outbox starts, so a corrupt file never keeps the gateway down.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.metrics import Metrics
from gateway.types import Alert, Reading

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries(
    handler TEXT NOT NULL,
    priority INTEGER NOT NULL,
    entry_id INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    replay INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY(handler, priority, entry_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_entry ON deliveries(entry_id);
"""


def is_full(exc: sqlite3.Error) -> bool:
    """True for SQLite's "database or disk is full"."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)


def open_database(path: Path, hard_limit_bytes: int | None, handlers: tuple[str, ...],
                  metrics: Metrics) -> tuple[sqlite3.Connection, Recovered]:
    """Open (creating) the outbox file and take over its contents (``recover``);
    ``hard_limit_bytes`` caps it via ``max_page_count``.

    A full disk propagates; a file unreadable at open or during recovery is moved aside
    and a new one created."""
    try:
        return _connect(path, hard_limit_bytes, handlers, metrics)
    except sqlite3.DatabaseError as exc:
        if is_full(exc):
            raise
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.error("outbox %s is unreadable (%s); moved to %s, starting empty", path, exc, aside)
        metrics.inc("outbox_errors_total", op="open_corrupt")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")
        return _connect(path, hard_limit_bytes, handlers, metrics)


def _connect(path: Path, hard_limit_bytes: int | None, handlers: tuple[str, ...],
             metrics: Metrics) -> tuple[sqlite3.Connection, Recovered]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if hard_limit_bytes is not None:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={max(1, hard_limit_bytes // page)}")
        conn.executescript(_SCHEMA)
        return conn, recover(conn, handlers, metrics)
    except BaseException:
        conn.close()
        raise


@dataclass
class Recovered:
    """What the file held at open: entries up to ``restart_boundary`` are replays."""

    restart_boundary: int
    stored_bytes: int
    entries_by_priority: dict[int, int] = field(default_factory=dict)
    pending: dict[tuple[str, int], int] = field(default_factory=dict)


def recover(conn: sqlite3.Connection, handlers: tuple[str, ...], metrics: Metrics) -> Recovered:
    """Make everything stored due now and purge rows of handlers no longer configured.

    The clean-up is best-effort (a database too full to write still opens and delivers);
    the replay mark is the returned ``restart_boundary``, kept in memory by the caller."""
    boundary = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM entries").fetchone()[0])
    marks = ",".join("?" * len(handlers))
    try:
        conn.execute("BEGIN IMMEDIATE")
        removed = conn.execute(f"DELETE FROM deliveries WHERE handler NOT IN ({marks})", handlers).rowcount
        conn.execute("DELETE FROM entries WHERE NOT EXISTS "
                     "(SELECT 1 FROM deliveries d WHERE d.entry_id = entries.id)")
        conn.execute("UPDATE deliveries SET next_attempt_at = 0 WHERE next_attempt_at > 0")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        metrics.inc("outbox_errors_total", op="recover")
        log.error("outbox: start-up clean-up skipped (%s); delivering what is stored", exc)
    else:
        if removed:
            metrics.inc("outbox_dropped_total", removed, reason="handler_removed")
            log.warning("outbox: dropped %d deliveries for handlers no longer configured", removed)
    found = Recovered(boundary, conn.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
    for prio, n in conn.execute("SELECT priority, COUNT(*) FROM entries GROUP BY priority"):
        found.entries_by_priority[prio] = n
    for handler, prio, n in conn.execute(
            "SELECT handler, priority, COUNT(*) FROM deliveries GROUP BY handler, priority"):
        found.pending[(handler, prio)] = n
    return found


ALERT, TELEMETRY = 0, 1  # priorities: lower is delivered first
ENTRY_OVERHEAD = 64  # bytes charged per entry row beyond its payload
DELIVERY_OVERHEAD = 48  # bytes charged per delivery row

@dataclass(slots=True)
class OutboxEntry:
    """One pending delivery: exactly one of ``alert`` / ``reading`` is set."""

    id: int
    kind: Literal["alert", "telemetry"]
    alert: Alert | None
    reading: Reading | None
    attempts: int
    replay: bool
    created_at: float


def decode_entry(entry_id: int, priority: int, payload: str, attempts: int, replay: bool,
                 created_at: float) -> OutboxEntry:
    """An ``OutboxEntry`` from its stored row; ValueError/TypeError/KeyError when unreadable."""
    data = json.loads(payload)
    if priority == ALERT:
        return OutboxEntry(entry_id, "alert", Alert.from_dict({**data, "replay": replay}), None,
                           attempts, replay, created_at)
    return OutboxEntry(entry_id, "telemetry", None, Reading.from_dict(data), attempts, replay, created_at)


@dataclass(slots=True)
class Evicted:
    """What one telemetry eviction removed (applied to the counters after COMMIT)."""

    entries: int = 0
    freed: int = 0
    per_handler: dict[str, int] = field(default_factory=dict)


def evict_oldest_telemetry(conn: sqlite3.Connection, need: int) -> Evicted:
    """Inside a transaction: delete the oldest telemetry until ``need`` bytes are freed
    (or none is left). The caller applies the accounting after COMMIT."""
    ev = Evicted()
    while ev.freed < need:
        rows = conn.execute("SELECT id, size FROM entries WHERE priority = ? ORDER BY id LIMIT 256",
                            (TELEMETRY,)).fetchall()
        if not rows:
            break
        take = []
        for entry_id, size in rows:
            take.append(entry_id)
            ev.freed += size
            if ev.freed >= need:
                break
        marks = ",".join("?" * len(take))
        for (handler,) in conn.execute(f"DELETE FROM deliveries WHERE entry_id IN ({marks}) "
                                       f"RETURNING handler", take).fetchall():
            ev.per_handler[handler] = ev.per_handler.get(handler, 0) + 1
        conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", take)
        ev.entries += len(take)
    return ev


def evict_telemetry_share(conn: sqlite3.Connection, entries: int) -> Evicted:
    """In its own transaction: delete the ``entries`` oldest telemetry entries (a full disk's
    way out). Raises sqlite3.OperationalError with the transaction still open on failure."""
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute("SELECT COALESCE(SUM(size), 0) FROM (SELECT size FROM entries "
                       "WHERE priority = ? ORDER BY id LIMIT ?)", (TELEMETRY, entries)).fetchone()
    ev = evict_oldest_telemetry(conn, int(row[0]))
    conn.execute("COMMIT")
    return ev


def insert_entries(conn: sqlite3.Connection, priority: int, rows: list[tuple[str, float, int]],
                   replay_by_handler: dict[str, bool]) -> list[int]:
    """Inside the caller's transaction: insert ``(payload, created_at, size)`` entries and one
    delivery row per handler each (``replay`` set for handlers that are failing now)."""
    ids: list[int] = []
    for payload, created_at, size in rows:
        cur = conn.execute("INSERT INTO entries(priority, created_at, size, payload) VALUES (?,?,?,?)",
                           (priority, created_at, size, payload))
        entry_id = int(cur.lastrowid or 0)
        ids.append(entry_id)
        conn.executemany("INSERT INTO deliveries(handler, priority, entry_id, replay) VALUES (?,?,?,?)",
                         [(h, priority, entry_id, int(r)) for h, r in replay_by_handler.items()])
    return ids

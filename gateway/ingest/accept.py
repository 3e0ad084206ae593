"""Accepting uplinks: drop redelivered duplicates, make the rest durable, then hand them on.

Sources get one ``SourceEmitter`` each (it is the ``emit`` of ``gateway.contracts``).
``emit(uplink)`` checks the duplicate horizon and holds the uplink; ``emit.commit()`` writes
everything the source holds to the ingest log in one append + fsync
(``gateway.ingest.log``) and only then hands the uplinks to the pipeline, in log order.
So the pipeline never sees an uplink that is not on disk, and a source that acknowledges
after ``commit()`` returned True acknowledges only durable uplinks (the MQTT source sends
its PUBACKs for a received chunk then). Sources that never call ``commit`` (third-party
ones) are committed by a timer every ``max_delay_s``.

``commit()`` returns False when the log write failed (disk full, I/O error): the held
uplinks are then not accepted. With ``deliver_on_failure`` (the serial source: a radio
frame cannot be asked for again) they still go to the pipeline, counted as
``ingest_log_bypassed_total``; otherwise they are dropped, counted
(``uplinks_dropped_total{reason=log_write_failed}``) and forgotten by the duplicate check,
so the broker's redelivery of the unacknowledged messages is taken again.

Duplicates (sources whose transport redelivers, MQTT): ChirpStack's ``deduplicationId`` when the uplink has one, else
(DevEUI, fCnt, payload) when it has a frame counter. The horizon is the last
``dedup_horizon`` keys (a bounded LRU); the keys of the records the log still holds are
loaded at start (``replay``), so a message redelivered after a crash is recognised.
Drops are counted in ``uplinks_duplicate_total{source,reason=dedup_id|f_cnt}``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from gateway.ingest.log import IngestLog
from gateway.metrics import Metrics
from gateway.types import RawUplink

log = logging.getLogger(__name__)

REPLAY_CHUNK = 256
"""Replayed records are handed on in chunks of this many (``deliver_chunk``)."""


def dedup_key(up: RawUplink) -> tuple[str, Hashable] | None:
    """(reason, key) identifying a redelivery of the same uplink, None when unknowable."""
    if up.dedup_id:
        return "dedup_id", up.dedup_id
    if up.f_cnt is not None:
        return "f_cnt", (up.device_id, up.f_cnt, hashlib.blake2b(up.payload, digest_size=8).digest())
    return None


class IngestAcceptor:
    """Owns the ingest log and the duplicate horizon; see the module docstring."""

    def __init__(self, ingest_log: IngestLog, deliver: Callable[[RawUplink], None], metrics: Metrics, *,
                 dedup_horizon: int = 65536, max_delay_s: float = 0.05,
                 deliver_chunk: Callable[[list[RawUplink]], None] | None = None) -> None:
        """``deliver_chunk`` (optional) takes a whole committed chunk in log order at once
        (``Pipeline.ingest_logged_chunk``); without it each uplink goes to ``deliver``."""
        self.log = ingest_log
        self.deliver = deliver
        self.deliver_chunk = deliver_chunk
        self.metrics = metrics
        self.dedup_horizon = dedup_horizon
        self.max_delay_s = max_delay_s
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one log write (and its hand-over) at a time: log order = seq order
        self._emitters: list[SourceEmitter] = []
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        metrics.describe("uplinks_duplicate_total", "Redelivered uplinks dropped by the duplicate check, by reason")
        metrics.describe("ingest_log_bypassed_total", "Uplinks handed on although the ingest log could not store them")

    def emitter(self, source: str, redelivers: bool = True) -> SourceEmitter:
        """The ``emit`` for one source. ``redelivers``: the source's transport sends what was
        not acknowledged again (MQTT): duplicates are checked, and a failed write drops the
        held uplinks. Otherwise (a radio on serial) no duplicate check, and a failed write
        still hands them on."""
        em = SourceEmitter(self, source, deliver_on_failure=not redelivers, dedup=redelivers)
        self._emitters.append(em)
        return em

    # ---- duplicates -----------------------------------------------------------------
    def remember(self, up: RawUplink, count: bool = True) -> bool:
        """Record the uplink's key; False (and counted, unless ``count`` is False) when it is
        a duplicate."""
        found = dedup_key(up)
        if found is None:
            return True
        reason, key = found
        with self._seen_lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                if count:
                    self.metrics.inc("uplinks_duplicate_total", source=up.source or "?", reason=reason)
                return False
            self._seen[key] = None
            if len(self._seen) > self.dedup_horizon:
                self._seen.popitem(last=False)
        return True

    def forget(self, uplinks: list[RawUplink]) -> None:
        with self._seen_lock:
            for up in uplinks:
                found = dedup_key(up)
                if found is not None:
                    self._seen.pop(found[1], None)

    # ---- writing --------------------------------------------------------------------
    def write(self, uplinks: list[RawUplink], deliver_on_failure: bool) -> bool:
        with self._write_lock:
            try:
                self.log.write(uplinks)
            except OSError as exc:
                log.error("ingest log write of %d uplinks failed: %s", len(uplinks), exc)
                if deliver_on_failure:
                    self.metrics.inc("ingest_log_bypassed_total", len(uplinks))
                    self._hand_on(uplinks)
                else:
                    self.forget(uplinks)
                    self.metrics.inc("uplinks_dropped_total", len(uplinks), reason="log_write_failed")
                return False
            self._hand_on(uplinks)
        return True

    def _hand_on(self, uplinks: list[RawUplink]) -> None:
        if self.deliver_chunk is not None:
            self.deliver_chunk(uplinks)
        else:
            for up in uplinks:
                self.deliver(up)

    def release_through(self, seq: int) -> None:
        """Retention after a checkpoint at ``seq`` (any thread)."""
        with self._write_lock:
            self.log.release_through(seq)

    # ---- start and timer ------------------------------------------------------------
    def replay(self, after: int) -> int:
        """Load the duplicate keys of every record the log holds and hand the records with
        seq > ``after`` to the pipeline (before the sources start). Returns how many."""
        n = 0
        chunk: list[RawUplink] = []
        for up in self.log.records(0):
            self.remember(up, count=False)
            if up.seq > after:
                chunk.append(up)
                n += 1
                if len(chunk) >= REPLAY_CHUNK:
                    self._hand_on(chunk)
                    chunk = []
        if chunk:
            self._hand_on(chunk)
        return n

    def start(self) -> None:
        self._timer = threading.Thread(target=self._commit_loop, name="ingest-log-commit", daemon=True)
        self._timer.start()

    def _commit_loop(self) -> None:
        while not self._stop.wait(self.max_delay_s):
            for em in list(self._emitters):
                if not em.self_committing:
                    em.commit()

    def close(self) -> None:
        """Commit what sources still hold (the pipeline must still run), stop the timer,
        close the log."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(5)
        for em in self._emitters:
            em.commit()
        with self._write_lock:
            self.log.close()


class SourceEmitter:
    """One source's ``emit``: ``__call__`` holds, ``commit`` makes durable and hands on."""

    def __init__(self, acceptor: IngestAcceptor, source: str, deliver_on_failure: bool, dedup: bool = True) -> None:
        self.acceptor = acceptor
        self.dedup = dedup
        self.source = source
        self.deliver_on_failure = deliver_on_failure
        self.self_committing = False
        self._held: list[RawUplink] = []
        self._lock = threading.Lock()
        self._failed = False  # a timer commit failed since the source last committed

    def __call__(self, uplink: RawUplink) -> None:
        if self.dedup and not self.acceptor.remember(uplink):
            return
        with self._lock:
            self._held.append(uplink)

    def commit(self) -> bool:
        """Write what this source holds (one fsync) and hand it on; False when the write failed
        (also a failed timer commit since the last call)."""
        if threading.current_thread() is not self.acceptor._timer:
            self.self_committing = True
        with self._lock:
            held, self._held = self._held, []
            failed, self._failed = self._failed, False
        ok = self.acceptor.write(held, self.deliver_on_failure) if held else True
        if not ok and threading.current_thread() is self.acceptor._timer:
            self._failed = True
            return False
        return ok and not failed

"""Which worker owns which partition: a pure, deterministic function of the live members.

Every worker computes the same answer from the same member list, so no coordinator is
needed. ``assign`` is balanced (owners differ by at most one partition) and sticky:
partitions are ranked per worker by rendezvous hashing (highest random weight, sha256 of
``worker|partition``), and each partition, in order of how strongly its best free worker
wants it, goes to the highest-ranked worker that is still under its share. When one worker
joins or leaves, about ``P / n`` partitions move, not all of them.

``Membership`` keeps the members heard from recently (heartbeats on the cluster's fanout
exchange; the source feeds it); a member silent for ``timeout_s`` is dropped.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable


def _weight(worker: str, partition: int) -> int:
    digest = hashlib.sha256(f"{worker}|{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def assign(partitions: int, workers: Iterable[str]) -> dict[str, list[int]]:
    """Map each worker to its partitions (sorted); every partition has exactly one owner.

    With n workers and P partitions, the first ``P % n`` workers by id may hold
    ``P // n + 1``, the rest ``P // n``. An empty worker list gives an empty map.
    """
    members = sorted(set(workers))
    if not members:
        return {}
    n = len(members)
    base, extra = divmod(partitions, n)
    capacity = {w: base + (1 if i < extra else 0) for i, w in enumerate(members)}
    # every (weight, worker, partition) candidate, strongest first; greedy fill under capacity
    candidates = sorted(((_weight(w, p), w, p) for w in members for p in range(partitions)), reverse=True)
    owner: dict[int, str] = {}
    held = {w: 0 for w in members}
    for _, w, p in candidates:
        if p in owner or held[w] >= capacity[w]:
            continue
        owner[p] = w
        held[w] += 1
    out: dict[str, list[int]] = {w: [] for w in members}
    for p, w in owner.items():
        out[w].append(p)
    return {w: sorted(ps) for w, ps in out.items()}


class Membership:
    """Members heard from within ``timeout_s`` (this worker always counts itself)."""

    def __init__(self, me: str, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self.timeout_s = timeout_s
        self.clock = clock
        self._seen: dict[str, float] = {me: clock()}

    def heard(self, worker: str) -> None:
        self._seen[worker] = self.clock()

    def left(self, worker: str) -> None:
        """A member said goodbye (clean stop): drop it now instead of after the timeout."""
        if worker != self.me:
            self._seen.pop(worker, None)

    def live(self) -> list[str]:
        now = self.clock()
        self._seen[self.me] = now
        for w in [w for w, t in self._seen.items() if now - t > self.timeout_s]:
            del self._seen[w]
        return sorted(self._seen)

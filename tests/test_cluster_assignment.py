"""Partition assignment and partition snapshots of the rabbitmq source (no broker needed)."""

from __future__ import annotations

import pytest

from plugins.sources.rabbitmq.assignment import Membership, assign
from plugins.sources.rabbitmq.options import RabbitSourceOptions
from plugins.sources.rabbitmq.snapshot import PartitionSnapshot, SnapshotError, chain


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5, 7, 16, 20])
def test_every_partition_has_one_owner_and_shares_differ_by_at_most_one(workers: int) -> None:
    names = [f"gw-{i}" for i in range(workers)]
    owned = assign(16, names)
    flat = sorted(p for ps in owned.values() for p in ps)
    assert flat == list(range(16))
    sizes = [len(ps) for ps in owned.values()]
    assert max(sizes) - min(sizes) <= 1
    assert assign(16, list(reversed(names))) == owned  # every worker computes the same map


def test_a_worker_leaving_moves_little_more_than_its_own_partitions() -> None:
    names = [f"gw-{i}" for i in range(4)]
    before = assign(24, names)
    after = assign(24, names[:3])
    owner_before = {p: w for w, ps in before.items() for p in ps}
    owner_after = {p: w for w, ps in after.items() for p in ps}
    moved = [p for p in range(24) if owner_before[p] != owner_after[p]]
    assert set(before["gw-3"]) <= set(moved)
    assert len(moved) <= 2 * len(before["gw-3"])  # plus a few to rebalance (not all of them)


def test_no_workers_no_assignment() -> None:
    assert assign(8, []) == {}


def test_membership_drops_a_silent_worker_and_keeps_itself() -> None:
    now = [100.0]
    m = Membership("me", timeout_s=3.0, clock=lambda: now[0])
    m.heard("a")
    m.heard("b")
    assert m.live() == ["a", "b", "me"]
    now[0] += 2.0
    m.heard("a")
    now[0] += 2.0  # b silent for 4 s
    assert m.live() == ["a", "me"]
    m.left("a")
    assert m.live() == ["me"]
    m.left("me")  # never drops itself
    now[0] += 100
    assert m.live() == ["me"]


def test_snapshot_round_trip_and_damage() -> None:
    snap = PartitionSnapshot(partition=3, worker="gw-1", seq=42, last_fcnt={"a84041000000000a": 17},
                             devices=["a84041000000000a"], state=b"LGM1\x00\x01")
    data = snap.encode()
    assert PartitionSnapshot.decode(data) == snap
    for bad in (b"", b"XXXX" + data[4:], data[:10], data[:4] + b"\xff\xff\x00\x00" + data[8:]):
        with pytest.raises(SnapshotError):
            PartitionSnapshot.decode(bad)


def test_the_chain_starts_at_the_newest_full_snapshot() -> None:
    snaps = [PartitionSnapshot(0, "w", seq, full=full) for seq, full in
             [(1, False), (2, True), (3, False), (4, True), (5, False), (6, False)]]
    got, complete = chain(snaps)
    assert [s.seq for s in got] == [4, 5, 6] and complete
    got, complete = chain([s for s in snaps if not s.full])
    assert [s.seq for s in got] == [1, 3, 5, 6] and not complete
    assert chain([]) == ([], False)


def test_options_refuse_checkpoints_the_prefetch_cannot_hold() -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        RabbitSourceOptions(prefetch=100, checkpoint_every=100)
    with pytest.raises(ValueError, match="member_timeout_s"):
        RabbitSourceOptions(member_heartbeat_s=1.0, member_timeout_s=1.5)

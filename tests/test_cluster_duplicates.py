"""The cluster's duplicate check against restored partition snapshots (``Partition.take``):
a redelivered uplink that a snapshot covers is dropped, a device that reset its frame
counter is not, and snapshots from writers without uplink ids fall back to the counter."""

from __future__ import annotations

from plugins.sources.rabbitmq.partition import Partition
from plugins.sources.rabbitmq.snapshot import MAGIC, PartitionSnapshot

WINDOW = 1024


def _old_owner_snapshot(uplinks: list[tuple[str, int, str]]) -> PartitionSnapshot:
    """What the previous owner wrote after taking ``uplinks`` (device, fCnt, dedup id)."""
    old = Partition(p=0, channel=None, gen=1)
    for dev, f_cnt, dedup_id in uplinks:
        assert old.take(dev, f_cnt, WINDOW, dedup_id)
    return PartitionSnapshot.decode(old.next_snapshot("w1", seq=1, full_every=4).encode())


def test_a_covered_redelivery_is_dropped_and_an_uncovered_one_is_taken() -> None:
    snap = _old_owner_snapshot([("dev-a", 10, "id-10"), ("dev-a", 11, "id-11")])
    new = Partition(p=0, channel=None, gen=2)
    new.adopt([snap], complete=True, full_every=4)
    assert not new.take("dev-a", 11, WINDOW, "id-11")  # acked late: the snapshot covers it
    assert not new.take("dev-a", 10, WINDOW, "id-10")
    assert new.take("dev-a", 12, WINDOW, "id-12")  # sent after the snapshot: taken


def test_a_device_that_reset_its_frame_counter_is_taken_after_a_handoff() -> None:
    snap = _old_owner_snapshot([("dev-a", 500, "id-500"), ("dev-a", 501, "id-501")])
    new = Partition(p=0, channel=None, gen=2)
    new.adopt([snap], complete=True, full_every=4)
    # rejoined with fCnt 0, 1, 2: below the last counter, inside the window, but new uplinks
    assert [new.take("dev-a", f, WINDOW, f"id-reset-{f}") for f in range(3)] == [True, True, True]
    assert new.take("dev-a", 3, WINDOW, "id-reset-3")


def test_snapshots_without_ids_fall_back_to_the_frame_counter() -> None:
    snap = _old_owner_snapshot([("dev-a", 500, "id-500")])
    raw = snap.encode()
    legacy = raw.replace(b',"ids":["id-500"]', b"")  # an older writer's header
    assert legacy != raw and legacy.startswith(MAGIC)
    fixed = bytearray(legacy)
    fixed[4:8] = (int.from_bytes(raw[4:8], "little") - (len(raw) - len(legacy))).to_bytes(4, "little")
    old = PartitionSnapshot.decode(bytes(fixed))
    assert not old.ids_known and old.last_fcnt == {"dev-a": 500}
    new = Partition(p=0, channel=None, gen=2)
    new.adopt([old], complete=True, full_every=4)
    assert not new.take("dev-a", 499, WINDOW, "id-499")  # by counter: inside the window
    assert new.take("dev-a", 501, WINDOW, "id-501")


def test_ids_are_those_since_the_previous_snapshot() -> None:
    part = Partition(p=0, channel=None, gen=1)
    part.take("dev-a", 1, WINDOW, "id-1")
    first = part.next_snapshot("w1", seq=1, full_every=4)
    part.take("dev-a", 2, WINDOW, "id-2")
    part.take("dev-b", None, WINDOW, None)
    second = part.next_snapshot("w1", seq=2, full_every=4)
    assert first.ids == ["id-1"] and second.ids == ["id-2"]

"""The partition snapshot: what the next owner of a partition restores before consuming.

Layout (no pickle; safe to read from the broker):
``b"LGP1"`` | u32 header length | header (JSON, UTF-8) | device state blob.

The header says which partition, who wrote it, a sequence number (per writer), whether it
is ``full`` (every device of the partition) or a delta (the devices that took uplinks
since the previous snapshot), the last frame counter taken per device it holds, and the
network server's uplink ids (``deduplicationId``) taken since the previous snapshot: the
duplicate check that makes a redelivery after a newer snapshot harmless uses the ids when
an uplink has one (a frame-counter reset is then no duplicate) and the counters otherwise.
Headers without ``ids`` (older writers) still load; uplinks are then checked by counter. The blob is the
device-state codec's ``dump_devices`` output (empty when the gateway has no codec: then
only the frame counters move).

The partition's snapshot queue keeps the last ``SNAPSHOT_KEEP`` messages (drop-head) and a
writer makes every ``full_every``-th one full (at most half of that), so the queue always
holds a full snapshot and the deltas after it: ``chain`` picks them, and applying them in
order gives the partition's state as of the newest one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

MAGIC = b"LGP1"
_LEN = struct.Struct("<I")


class SnapshotError(ValueError):
    """A snapshot message that cannot be read (the reason says why)."""


@dataclass
class PartitionSnapshot:
    partition: int
    worker: str
    seq: int
    full: bool = True
    last_fcnt: dict[str, int] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    state: bytes = b""
    ids: list[str] = field(default_factory=list)
    ids_known: bool = True  # False: an older header without ``ids``

    def encode(self) -> bytes:
        header = json.dumps({"partition": self.partition, "worker": self.worker, "seq": self.seq, "full": self.full,
                             "last_fcnt": self.last_fcnt, "devices": self.devices, "ids": self.ids},
                            separators=(",", ":")).encode()
        return MAGIC + _LEN.pack(len(header)) + header + self.state

    @classmethod
    def decode(cls, data: bytes) -> PartitionSnapshot:
        if data[:4] != MAGIC or len(data) < 8:
            raise SnapshotError("not a partition snapshot")
        (n,) = _LEN.unpack_from(data, 4)
        if 8 + n > len(data):
            raise SnapshotError("header cut short")
        try:
            h = json.loads(data[8:8 + n])
            return cls(partition=int(h["partition"]), worker=str(h["worker"]), seq=int(h["seq"]), full=bool(h["full"]),
                       last_fcnt={str(k): int(v) for k, v in h["last_fcnt"].items()},
                       devices=[str(d) for d in h["devices"]], state=bytes(data[8 + n:]),
                       ids=[str(i) for i in h.get("ids", [])], ids_known="ids" in h)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"bad header: {exc}") from exc


def chain(snapshots: list[PartitionSnapshot]) -> tuple[list[PartitionSnapshot], bool]:
    """The snapshots to apply, oldest first: from the newest full one on. ``snapshots`` are
    in queue order (oldest first). Returns (chain, complete); without a full snapshot every
    delta is returned and ``complete`` is False (devices missing from them recalibrate)."""
    for i in range(len(snapshots) - 1, -1, -1):
        if snapshots[i].full:
            return snapshots[i:], True
    return list(snapshots), False

"""What a worker holds of one partition, and the broker reads around it (the rabbitmq
source's connection thread only; nothing here is thread-safe).

``Partition`` keeps the delivery bookkeeping (last tag handed on, how many since the last
acknowledged checkpoint), the partition's devices with their last frame counters and the
network server's uplink ids taken since the last checkpoint (the duplicate check against a
restored snapshot, see ``Partition.take``) and the devices that changed since the last
checkpoint (a delta snapshot's content). ``read_snapshots`` takes a partition's snapshot
messages off the broker and puts them back, in order, for whoever comes next;
``check_partitions`` makes sure the broker's partition queues match the configured count;
``parse_delivery`` reads a delivery as the MQTT source reads a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pika.exceptions

from gateway.cluster.topology import SNAPSHOT_KEEP, Topology
from gateway.types import RawUplink
from plugins.sources.mqtt.shapes import UplinkShapeError, parse_uplink
from plugins.sources.rabbitmq.snapshot import PartitionSnapshot, SnapshotError, chain


class PartitionMismatch(Exception):
    """The broker's partition queues do not match the configured count (message says how)."""


@dataclass
class Partition:
    """One partition this worker subscribed to (see the module docstring)."""

    p: int
    channel: Any
    gen: int  # which subscription: results of an older one are ignored
    active: bool = False  # restored and consuming (a delivery has come since subscribing)
    releasing: bool = False
    last_tag: int = 0  # delivery tag of the last uplink handed on
    pending: int = 0  # handed on since the last acknowledged checkpoint
    checkpointing: bool = False
    last_checkpoint: float = 0.0
    devices: set[str] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)  # took uplinks since the last checkpoint
    since_full: int = 0  # snapshots on the queue after the newest full one
    last_fcnt: dict[str, int] = field(default_factory=dict)
    recent_ids: list[str] = field(default_factory=list)  # dedup ids taken since the last checkpoint
    covered_ids: set[str] = field(default_factory=set)  # dedup ids the restored snapshots cover
    ids_known: bool = False  # the restored snapshots carry dedup ids (written by this version)

    def take(self, device_id: str, f_cnt: int | None, duplicate_window: int, dedup_id: str | None = None) -> bool:
        """Note an uplink of ``device_id``; False when a restored snapshot already covers it.

        An uplink with the network server's id (ChirpStack ``deduplicationId``) is covered
        exactly when a restored snapshot lists that id: a device that reset its frame counter
        is then still taken. Without an id (or after snapshots that carry none) it is covered
        when its fCnt is at most ``duplicate_window - 1`` below the device's last one, or equal."""
        if dedup_id is not None and self.ids_known:
            if dedup_id in self.covered_ids:
                return False
        else:
            last = self.last_fcnt.get(device_id)
            if f_cnt is not None and last is not None and 0 <= last - f_cnt < duplicate_window:
                return False
        if dedup_id is not None:
            self.recent_ids.append(dedup_id)
        if f_cnt is not None:
            self.last_fcnt[device_id] = f_cnt
        self.devices.add(device_id)
        self.dirty.add(device_id)
        return True

    def next_snapshot(self, worker: str, seq: int, full_every: int) -> PartitionSnapshot:
        """The header of the next checkpoint's snapshot (state filled in by the pipeline):
        full every ``full_every``-th time, else the devices changed since the last one."""
        full = self.since_full >= full_every
        devices = sorted(self.devices if full else self.dirty)
        self.dirty = set()
        self.since_full = 0 if full else self.since_full + 1
        ids, self.recent_ids = self.recent_ids, []
        return PartitionSnapshot(partition=self.p, worker=worker, seq=seq, full=full, devices=devices,
                                 last_fcnt={d: self.last_fcnt[d] for d in devices if d in self.last_fcnt},
                                 ids=ids, ids_known=True)

    def adopt(self, snaps: list[PartitionSnapshot], complete: bool, full_every: int) -> None:
        """Take over the devices and frame counters of a restored chain (oldest first)."""
        for snap in snaps:
            self.last_fcnt.update(snap.last_fcnt)
            self.devices.update(snap.devices)
            self.covered_ids.update(snap.ids)
        self.ids_known = bool(snaps) and all(snap.ids_known for snap in snaps)
        self.since_full = len(snaps) - 1 if complete else full_every


def parse_delivery(routing_key: str, body: bytes, shape: str, max_bytes: int) -> tuple[RawUplink | None, str | None]:
    """(uplink, None), or (None, reject reason): the MQTT source's shapes, with the routing
    key read as the MQTT topic (``application.<app>.device.<eui>.event.up``)."""
    if len(body) > max_bytes:
        return None, "too_large"
    try:
        return parse_uplink(routing_key.replace(".", "/"), body, shape), None
    except UplinkShapeError as exc:
        return None, exc.reason


def read_snapshots(channel: Any, queue: str) -> tuple[list[PartitionSnapshot], bool, list[str]]:
    """The chain to restore from ``queue`` (``snapshot.chain``), whether it starts with a full
    snapshot, and one line per unreadable message. Every message goes back, in order."""
    found: list[PartitionSnapshot] = []
    errors: list[str] = []
    last_tag = 0
    for _ in range(2 * SNAPSHOT_KEEP):
        method, _, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        last_tag = method.delivery_tag
        try:
            found.append(PartitionSnapshot.decode(body))
        except SnapshotError as exc:
            errors.append(str(exc))
    if last_tag:
        channel.basic_nack(last_tag, multiple=True, requeue=True)
    snaps, complete = chain(found)
    return snaps, complete, errors


def check_partitions(connection: Any, topo: Topology) -> None:
    """Passive declares: the first and last partition queue exist, the one after does not."""
    for p in (0, topo.partitions - 1):
        ch = connection.channel()
        try:
            ch.queue_declare(topo.partition_queue(p), passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise PartitionMismatch(f"queue {topo.partition_queue(p)} is missing ({exc.reply_text}); "
                                    "run `lora-gateway cluster init` first") from exc
        ch.close()
    ch = connection.channel()
    try:
        ch.queue_declare(topo.partition_queue(topo.partitions), passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return
    raise PartitionMismatch(f"queue {topo.partition_queue(topo.partitions)} exists: the cluster has more than "
                            f"{topo.partitions} partitions; set partitions as given to `cluster init`")

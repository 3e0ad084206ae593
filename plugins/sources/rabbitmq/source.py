"""The ``rabbitmq`` source: one worker of a gateway cluster behind RabbitMQ
(``docs/deployment-rabbitmq.md``; topology in ``gateway.cluster.topology``).

- **Claims its share**: workers announce themselves on the members exchange; each computes
  the same balanced assignment (``assignment.assign``) and consumes exactly its partitions,
  one channel each (delivery tags and acks are per channel). A partition no longer ours is
  released: final snapshot, ack, channel closed. Single active consumer guards the overlap.
- **Restores before it consumes**: on a partition's first delivery it reads the partition's
  snapshots (the newest full one and the deltas after it) and has the pipeline thread
  install them before any uplink of the partition.
- **Acknowledges only what a snapshot covers**: every ``checkpoint_every`` uplinks or
  ``checkpoint_interval_s``, the pipeline thread dumps (behind the uplinks handed on) the
  devices changed since the last checkpoint (every ``full_snapshot_every``-th time all of
  the partition's); the snapshot is published with a publisher confirm, then one
  ``basic.ack multiple`` follows. A killed worker leaves unacked exactly what its last
  snapshot does not cover; the broker redelivers it, in order, to the next owner; what a
  newer snapshot already covers is dropped by frame counter (``uplinks_duplicate_total``).
- Bounded: at most ``prefetch`` unacked uplinks per partition.

Threads: one runs pika's BlockingConnection (deliveries, heartbeats, publishing, acks); the
pipeline thread runs the dumps and restores (``bind_pipeline``).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from gateway.cluster.topology import Topology
from plugins.sources.rabbitmq.assignment import Membership, assign
from plugins.sources.rabbitmq.options import RabbitSourceOptions
from plugins.sources.rabbitmq.partition import Partition, PartitionMismatch, check_partitions, parse_delivery, read_snapshots

log = logging.getLogger(__name__)


class RabbitSource:
    """A Source (gateway.contracts) consuming this worker's share of the partition queues."""

    # The gateway's ingest acceptor must not drop redeliveries by its own (local) horizon:
    # after a reconnect this worker restores a partition's snapshot and must apply again
    # what the broker redelivers past it. Redeliveries a snapshot already covers are
    # dropped here, by the snapshot's frame counters.
    redelivers = False

    def __init__(self, name: str, options: RabbitSourceOptions, context: Any) -> None:
        self.name = name
        self.options = options
        self.metrics = context.metrics
        self.worker = options.worker_id or f"{context.gateway_id}-{os.getpid()}"
        self.topo = Topology(prefix=options.prefix, partitions=options.partitions,
                             source_exchange=options.source_exchange, binding_key=options.binding_key)
        self._emit: Callable[[Any], None] | None = None
        self._access: Any = None  # the gateway's PipelineHandoff (bind_pipeline)
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._parts: dict[int, Partition] = {}
        self._done: collections.deque[tuple[int, int, int, int, bytes, bool]] = collections.deque()
        self._gen = itertools.count(1)
        self._seq = itertools.count(1)
        self._view: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        self.membership = Membership(self.worker, options.member_timeout_s)
        self._conn: Any = None
        self._ctl: Any = None
        self._pub: Any = None
        m = self.metrics
        m.describe("cluster_partitions_owned", "Partitions this worker consumes and has restored")
        m.describe("cluster_partition_acquired_total", "Partitions taken over (state restored first)")
        m.describe("cluster_partition_released_total", "Partitions handed on (final snapshot, then acked)")
        m.describe("cluster_checkpoints_total", "Partition snapshots published (each followed by one ack)")
        m.describe("cluster_snapshot_bytes_total", "Bytes of partition snapshots published")
        m.describe("cluster_restore_seconds_total", "Time spent reading and installing partition snapshots")
        m.describe("cluster_members", "Live workers this worker sees (itself included)")

    # ---- the Source contract --------------------------------------------------------
    def bind_pipeline(self, handoff: Any) -> None:
        """``gateway.contracts.PartitionedSource``: the gateway's ``PipelineHandoff``."""
        self._access = handoff

    def start(self, emit: Callable[[Any], None]) -> None:
        if self._access is None:
            raise RuntimeError("the rabbitmq source needs the pipeline hook (bind_pipeline) before start")
        self._emit = emit
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"rabbitmq-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.options.release_timeout_s + 5.0)

    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def health_details(self) -> dict[str, Any]:
        """For /health: the worker id, the partitions it owns (restored, consuming) and those
        assigned to it (subscribed; a standby until the previous owner lets go)."""
        owned, assigned = self._view
        return {"worker": self.worker, "partitions_owned": list(owned), "partitions_assigned": list(assigned),
                "members": len(self.membership.live())}

    # ---- connection loop --------------------------------------------------------------
    def _run(self) -> None:
        try:
            params = self._params()
        except ValueError as exc:  # a setting that cannot work (the password): retrying cannot help
            log.error("rabbitmq source %s: %s; not connecting", self.name, exc)
            return
        delay = self.options.reconnect_min_s
        while not self._stop.is_set():
            try:
                self._session(params)
                delay = self.options.reconnect_min_s
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.metrics.inc("rabbitmq_connection_failures_total", source=self.name, reason=type(exc).__name__)
                log.warning("rabbitmq source %s: connection lost or refused (%s: %s); retrying in %.1f s",
                            self.name, type(exc).__name__, exc, delay)
            finally:
                self._lose_all()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.options.reconnect_max_s)

    def _params(self) -> pika.ConnectionParameters:
        o = self.options
        return pika.ConnectionParameters(host=o.host, port=o.port, virtual_host=o.vhost,
                                         credentials=pika.PlainCredentials(o.username, o.password()),
                                         heartbeat=o.heartbeat_s, blocked_connection_timeout=o.heartbeat_s * 3,
                                         connection_attempts=1, client_properties={"connection_name": self.worker})

    def _session(self, params: pika.ConnectionParameters) -> None:
        conn = self._conn = pika.BlockingConnection(params)
        try:
            ctl = self._ctl = conn.channel()
            self._check_topology(conn)
            members = ctl.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ctl.queue_bind(members, self.topo.members_exchange)
            ctl.basic_consume(members, self._on_member, auto_ack=True)
            pub = self._pub = conn.channel()
            pub.confirm_delivery()
            # the broker's partition snapshots are the state of record: whatever this worker
            # holds (a local checkpoint and log replay, a previous connection) is dropped
            # before it owns anything; and from here on this thread commits its own uplinks
            self._commit_chunk()
            self._access.call(self._access.forget_all)
            self._connected.set()
            self.metrics.set("source_connected", 1, source=self.name)
            log.info("rabbitmq source %s: worker %s connected to %s:%s, %d partitions",
                     self.name, self.worker, self.options.host, self.options.port, self.topo.partitions)
            settle_until = time.monotonic() + self.options.settle_s
            last_beat = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_beat >= self.options.member_heartbeat_s:
                    self._announce("alive")
                    last_beat = now
                conn.process_data_events(time_limit=0.02)
                self._commit_chunk()
                self._finish_checkpoints()
                if now >= settle_until:
                    self._reconcile()
                self._timed_checkpoints(now)
                self.metrics.set("cluster_unacked_uplinks", sum(st.pending for st in self._parts.values()))
            self._release_all()
            self._announce("leave")
        finally:
            self._connected.clear()
            self.metrics.set("source_connected", 0, source=self.name)
            try:
                if conn.is_open:
                    conn.close()
            except pika.exceptions.AMQPError:
                pass

    def _check_topology(self, conn: Any) -> None:
        try:
            check_partitions(conn, self.topo)
        except PartitionMismatch as exc:
            self._stop.set()  # a setting that cannot work: no retry
            log.error("rabbitmq source %s: %s", self.name, exc)
            raise pika.exceptions.AMQPError(str(exc)) from exc

    # ---- membership and assignment ----------------------------------------------------
    def _announce(self, event: str) -> None:
        body = json.dumps({"worker": self.worker, "event": event}).encode()
        self._ctl.basic_publish(self.topo.members_exchange, "", body)

    def _on_member(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        try:
            msg = json.loads(body)
            worker, event = str(msg["worker"]), msg.get("event")
        except (ValueError, KeyError, TypeError):
            return
        if event == "leave":
            self.membership.left(worker)
        else:
            self.membership.heard(worker)

    def _reconcile(self) -> None:
        live = self.membership.live()
        self.metrics.set("cluster_members", len(live))
        mine = set(assign(self.topo.partitions, live).get(self.worker, []))
        for p in sorted(mine - self._parts.keys()):
            self._subscribe(p)
        for p in sorted(self._parts.keys() - mine):
            self._release(self._parts[p])
        self._publish_view()

    def _publish_view(self) -> None:
        owned = tuple(sorted(p for p, st in self._parts.items() if st.active and not st.releasing))
        assigned = tuple(sorted(p for p, st in self._parts.items() if not st.releasing))
        if (owned, assigned) != self._view:
            for p in range(self.topo.partitions):
                self.metrics.set("cluster_partition_owned", 1 if p in owned else 0, partition=str(p))
            self.metrics.set("cluster_partitions_owned", len(owned))
            self._view = (owned, assigned)

    def _subscribe(self, p: int) -> None:
        ch = self._conn.channel()
        ch.basic_qos(prefetch_count=self.options.prefetch)
        st = Partition(p, ch, next(self._gen), last_checkpoint=time.monotonic())
        self._parts[p] = st
        ch.basic_consume(self.topo.partition_queue(p), lambda c, m, pr, b, st=st: self._on_delivery(st, m, b))
        log.info("rabbitmq source %s: subscribed to partition %d (owner once the previous one lets go)", self.name, p)

    # ---- deliveries --------------------------------------------------------------------
    def _on_delivery(self, st: Partition, method: Any, body: bytes) -> None:
        if st.releasing or self._parts.get(st.p) is not st:
            return  # left unacked: redelivered to the next owner when the channel closes
        if not st.active:
            self._acquire(st)
        st.last_tag = method.delivery_tag
        st.pending += 1
        self.metrics.inc("uplinks_received_total", source=self.name)
        uplink = self._parse(method.routing_key, body)
        if uplink is not None:
            if st.take(uplink.device_id, uplink.f_cnt, self.options.duplicate_window, uplink.dedup_id):
                assert self._emit is not None
                self._emit(uplink)
            else:
                self.metrics.inc("uplinks_duplicate_total", source=self.name, reason="partition_snapshot")
        if st.pending >= self.options.checkpoint_every and not st.checkpointing:
            self._checkpoint(st)

    def _parse(self, routing_key: str, body: bytes) -> Any:
        uplink, reason = parse_delivery(routing_key, body, self.options.shape, self.options.max_payload_bytes)
        if uplink is None:
            self.metrics.inc("uplinks_rejected_total", source=self.name, reason=str(reason))
            return None
        uplink.source = self.name
        return uplink

    def _commit_chunk(self) -> None:
        """With an ingest log (``emit.commit``), make what was handed on so far durable there
        and pass it to the pipeline; before every checkpoint, so a checkpoint covers it. A
        failed log write still hands the uplinks on (counted by the acceptor): in a cluster
        the partition snapshot on the broker, not the local log, is what an ack relies on."""
        commit = getattr(self._emit, "commit", None)
        if commit is not None and not commit():
            self.metrics.inc("rabbitmq_log_commit_failures_total", source=self.name)

    # ---- taking over ---------------------------------------------------------------------
    def _acquire(self, st: Partition) -> None:
        """Read the partition's snapshots (a full one and the deltas after it), queue their
        restore on the pipeline thread (ahead of this partition's first uplink), and take
        over their frame counters and device list."""
        t0 = time.monotonic()
        snaps, complete, errors = read_snapshots(self._ctl, self.topo.snapshot_queue(st.p))
        for error in errors:
            self.metrics.inc("cluster_snapshot_unreadable_total")
            log.error("rabbitmq source %s: a snapshot of partition %d is unreadable (%s)", self.name, st.p, error)
        if snaps and not complete:
            self.metrics.inc("cluster_snapshot_unreadable_total")
            log.error("rabbitmq source %s: no full snapshot of partition %d; devices missing from its deltas "
                      "recalibrate", self.name, st.p)
        st.adopt(snaps, complete, self.options.full_snapshot_every)
        access = self._access
        blobs = [snap.state for snap in snaps if snap.state]
        if blobs:
            access.call(lambda: access.restore(blobs))
        st.active = True
        took = time.monotonic() - t0
        self.metrics.inc("cluster_partition_acquired_total")
        self.metrics.inc("cluster_restore_seconds_total", took)
        self._publish_view()
        log.info("rabbitmq source %s: partition %d acquired (%s) in %.3f s", self.name, st.p,
                 f"{len(snaps)} snapshots from seq {snaps[0].seq} of {snaps[0].worker}, {len(st.devices)} devices, "
                 f"{sum(len(x.state) for x in snaps)} bytes" if snaps else "no snapshot", took)

    # ---- checkpoints ------------------------------------------------------------------
    def _timed_checkpoints(self, now: float) -> None:
        for st in list(self._parts.values()):
            if (st.active and st.pending and not st.checkpointing
                    and now - st.last_checkpoint >= self.options.checkpoint_interval_s):
                self._checkpoint(st)

    def _checkpoint(self, st: Partition, final: bool = False) -> None:
        """Ask the pipeline for the partition's state after what was handed on so far."""
        self._commit_chunk()
        st.checkpointing = True
        p, gen, tag, count = st.p, st.gen, st.last_tag, st.pending
        snap = st.next_snapshot(self.worker, next(self._seq), self.options.full_snapshot_every)
        devices = snap.devices
        access, done = self._access, self._done
        owned = sorted(st.devices) if final else []

        def on_pipeline() -> None:
            try:
                access.sync()
                snap.state = access.dump(devices)
            finally:
                if final:
                    access.forget(owned)
                done.append((p, gen, tag, count, snap.encode(), final))

        access.call(on_pipeline)

    def _finish_checkpoints(self) -> None:
        while self._done:
            p, gen, tag, count, data, final = self._done.popleft()
            st = self._parts.get(p)
            if st is None or st.gen != gen:
                continue
            self._pub.basic_publish("", self.topo.snapshot_queue(p), data,
                                    pika.BasicProperties(delivery_mode=2, content_type="application/octet-stream"))
            if tag:
                st.channel.basic_ack(tag, multiple=True)
            st.pending -= count
            st.checkpointing = False
            st.last_checkpoint = time.monotonic()
            self.metrics.inc("cluster_checkpoints_total")
            self.metrics.inc("cluster_snapshot_bytes_total", len(data))
            if final:
                # logged before the channel closes: the next owner's "acquired" comes after it
                log.info("rabbitmq source %s: partition %d releasing (final snapshot: %d devices, %d bytes)",
                         self.name, p, len(st.devices), len(data))
                self._close(st)
                self.metrics.inc("cluster_partition_released_total")
            elif st.releasing:
                self._checkpoint(st, final=True)

    # ---- letting go -------------------------------------------------------------------
    def _release(self, st: Partition) -> None:
        if st.releasing:
            return
        st.releasing = True
        self._publish_view()
        if not st.active:
            self._close(st)
        elif not st.checkpointing:
            self._checkpoint(st, final=True)
        # else: the checkpoint in flight finishes first, then the final one starts

    def _close(self, st: Partition) -> None:
        self._parts.pop(st.p, None)
        try:
            if st.channel.is_open:
                st.channel.close()  # unacked deliveries go back to the queue, in order
        except pika.exceptions.AMQPError:
            pass
        self._publish_view()

    def _release_all(self) -> None:
        """Clean stop: hand every partition on with a final snapshot (bounded wait)."""
        for st in list(self._parts.values()):
            self._release(st)
        deadline = time.monotonic() + self.options.release_timeout_s
        while self._parts and time.monotonic() < deadline:
            self._conn.process_data_events(time_limit=0.02)
            self._finish_checkpoints()

    def _lose_all(self) -> None:
        """The connection is gone: every partition's unacked uplinks go to the next owner,
        so the state this worker holds for their devices is stale; forget it."""
        devices = sorted({d for st in self._parts.values() for d in st.devices})
        self._parts.clear()
        self._done.clear()
        if devices and self._access is not None:
            access = self._access
            access.call(lambda: access.forget(devices))
        self._publish_view()

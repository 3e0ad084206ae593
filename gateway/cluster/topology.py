"""The broker-side layout of a gateway cluster, declared idempotently.

```
ChirpStack --(amq.topic, application.<app>.device.<devEUI>.event.up)--> amq.topic
amq.topic --(binding application.*.device.*.event.up)--> <prefix>.uplinks   (x-consistent-hash)
<prefix>.uplinks --(weight)--> <prefix>.p000 .. <prefix>.p<P-1>             (quorum, single active consumer)
<prefix>.snap.pNNN   (quorum, x-max-length 32, drop-head): the partition's state snapshots
<prefix>.members     (fanout): worker heartbeats, for the partition assignment
```

The consistent-hash exchange hashes the whole routing key, which holds the DevEUI (and
the application id, fixed per device), so one device always lands in one partition while
the bindings stay as they are. Changing P re-maps devices: that is a migration (drain, then
re-declare), never done by ``declare`` on a live cluster: ``declare`` refuses when the
existing partition queues do not match P.

``declare`` may run any number of times: re-declaring with equal arguments is a no-op in
RabbitMQ, and a binding that exists is not added twice (an x-consistent-hash exchange would
otherwise weigh that queue twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UPLINK_BINDING = "application.*.device.*.event.up"
SNAPSHOT_KEEP = 32
"""Messages a partition's snapshot queue keeps (a full snapshot and the deltas after it)."""


@dataclass(frozen=True)
class Topology:
    """Names and sizes of one cluster's broker objects (all derived from ``prefix``)."""

    prefix: str = "lora"
    partitions: int = 16
    source_exchange: str = "amq.topic"
    binding_key: str = UPLINK_BINDING
    weight: int = 20

    @property
    def hash_exchange(self) -> str:
        return f"{self.prefix}.uplinks"

    @property
    def members_exchange(self) -> str:
        return f"{self.prefix}.members"

    def partition_queue(self, p: int) -> str:
        return f"{self.prefix}.p{p:03d}"

    def snapshot_queue(self, p: int) -> str:
        return f"{self.prefix}.snap.p{p:03d}"

    @staticmethod
    def partition_arguments() -> dict[str, Any]:
        return {"x-queue-type": "quorum", "x-single-active-consumer": True}

    @staticmethod
    def snapshot_arguments() -> dict[str, Any]:
        return {"x-queue-type": "quorum", "x-max-length": SNAPSHOT_KEEP, "x-overflow": "drop-head"}


class TopologyError(Exception):
    """The broker holds a layout that ``declare`` must not change (the message says what)."""


def _queue_exists(connection: Any, name: str) -> bool:
    import pika.exceptions

    ch = connection.channel()
    try:
        ch.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    ch.close()
    return True


def declare(connection: Any, topo: Topology) -> list[str]:
    """Declare every object of ``topo`` over a pika BlockingConnection; returns what is there,
    one line each. Raises TopologyError when a partition queue beyond ``topo.partitions``
    exists (the cluster was made with more partitions: changing P re-maps devices)."""
    if _queue_exists(connection, topo.partition_queue(topo.partitions)):
        raise TopologyError(f"{topo.partition_queue(topo.partitions)} exists: this cluster has more than "
                            f"{topo.partitions} partitions; changing the count re-maps devices (drain first)")
    channel = connection.channel()
    done: list[str] = []
    channel.exchange_declare(topo.hash_exchange, "x-consistent-hash", durable=True)
    channel.exchange_bind(topo.hash_exchange, topo.source_exchange, topo.binding_key)
    done.append(f"exchange {topo.hash_exchange} (x-consistent-hash) <- {topo.source_exchange} [{topo.binding_key}]")
    channel.exchange_declare(topo.members_exchange, "fanout", durable=True)
    done.append(f"exchange {topo.members_exchange} (fanout, worker heartbeats)")
    for p in range(topo.partitions):
        q = topo.partition_queue(p)
        channel.queue_declare(q, durable=True, arguments=topo.partition_arguments())
        channel.queue_bind(q, topo.hash_exchange, str(topo.weight))
        channel.queue_declare(topo.snapshot_queue(p), durable=True, arguments=topo.snapshot_arguments())
    done.append(f"{topo.partitions} partition queues {topo.partition_queue(0)}..{topo.partition_queue(topo.partitions - 1)} "
                f"(quorum, single active consumer, hash weight {topo.weight})")
    done.append(f"{topo.partitions} snapshot queues {topo.snapshot_queue(0)}..{topo.snapshot_queue(topo.partitions - 1)} "
                f"(quorum, the last {SNAPSHOT_KEEP} snapshots: x-max-length, drop-head)")
    channel.close()
    return done

"""``lora-gateway cluster ...``: the broker side of a gateway cluster behind RabbitMQ.

``cluster init`` declares the topology (``gateway.cluster.topology``) and may be run any
number of times; ``cluster status`` lists the partition queues with their ready messages
and consumers. Connection settings come from ``--config`` (its first ``rabbitmq`` source)
or from the flags, flags winning. Needs pika (the ``[cluster]`` extra).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cluster.topology import UPLINK_BINDING, Topology, TopologyError, declare
from models.cli.errors import UserError


@dataclass
class ClusterSettings:
    host: str = "127.0.0.1"
    port: int = 5672
    vhost: str = "/"
    username: str = "guest"
    password: str = "guest"
    prefix: str = "lora"
    partitions: int = 16
    source_exchange: str = "amq.topic"
    binding_key: str = UPLINK_BINDING

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.prefix, partitions=self.partitions, source_exchange=self.source_exchange,
                        binding_key=self.binding_key)


def add_commands(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="gateway cluster behind RabbitMQ: declare and inspect the partition queues")
    csub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    for name, func, text in (("init", _init, "declare the exchanges, bindings and partition queues (idempotent)"),
                             ("status", _status, "partition queues: ready messages, consumers")):
        p = csub.add_parser(name, help=text)
        p.add_argument("--config", type=Path, help="gateway config whose first rabbitmq source gives the settings")
        p.add_argument("--host", help="RabbitMQ host (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="AMQP port (default 5672)")
        p.add_argument("--vhost", help="virtual host (default /)")
        p.add_argument("--username", help="user name (default guest)")
        p.add_argument("--password-env", help="environment variable holding the password")
        p.add_argument("--prefix", help="name prefix of the cluster's exchanges and queues (default lora)")
        p.add_argument("--partitions", type=int, help="number of partition queues (default 16)")
        p.set_defaults(func=func)
    cluster.set_defaults(func=lambda args: (cluster.print_help(), 2)[1])


def settings(args: argparse.Namespace) -> ClusterSettings:
    """The config's first rabbitmq source (when ``--config``), then the flags."""
    out = ClusterSettings()
    if args.config:
        from gateway.cli.run import load_everything

        cfg, _, _ = load_everything(args.config)
        found = [opts for kind, _, opts in cfg.source_options if kind == "rabbitmq"]
        if not found:
            raise UserError(f"{args.config} has no [[sources]] entry with type = \"rabbitmq\"")
        src: Any = found[0]  # the rabbitmq source's options (its plugin's model)
        for key in ("host", "port", "vhost", "username", "prefix", "partitions", "source_exchange", "binding_key"):
            setattr(out, key, getattr(src, key))
        try:
            out.password = src.password()
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    for key in ("host", "port", "vhost", "username", "prefix", "partitions"):
        value = getattr(args, key)
        if value is not None:
            setattr(out, key, value)
    if args.password_env:
        if args.password_env not in os.environ:
            raise UserError(f"environment variable {args.password_env} (--password-env) is not set")
        out.password = os.environ[args.password_env]
    if out.partitions < 1:
        raise UserError("--partitions must be at least 1")
    return out


def _connect(s: ClusterSettings) -> Any:
    try:
        import pika
        import pika.exceptions
    except ImportError as exc:
        raise UserError("lora-gateway cluster needs pika: pip install 'lora-edge-gateway[cluster]'") from exc
    logging_quiet()
    try:
        params = pika.ConnectionParameters(host=s.host, port=s.port, virtual_host=s.vhost,
                                           credentials=pika.PlainCredentials(s.username, s.password),
                                           connection_attempts=1)
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise UserError(f"cannot connect to RabbitMQ at {s.host}:{s.port}: {type(exc).__name__} {exc}".rstrip()) from exc


def logging_quiet() -> None:
    """pika logs every connection step at INFO and a passive declare's 404 at WARNING."""
    import logging

    logging.getLogger("pika").setLevel(logging.CRITICAL)


def _init(args: argparse.Namespace) -> int:
    import pika.exceptions

    s = settings(args)
    conn = _connect(s)
    try:
        for line in declare(conn, s.topology):
            print(line)
    except TopologyError as exc:
        raise UserError(str(exc)) from exc
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise UserError(f"the broker refused the topology: {exc.reply_code} {exc.reply_text}") from exc
    finally:
        if conn.is_open:
            conn.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    import pika.exceptions

    s = settings(args)
    topo = s.topology
    conn = _connect(s)
    try:
        ch = conn.channel()
        print(f"{'queue':<16} {'ready':>8} {'consumers':>9}")
        for p in range(topo.partitions):
            try:
                ok = ch.queue_declare(topo.partition_queue(p), passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise UserError(f"{topo.partition_queue(p)}: {exc.reply_text} (run `lora-gateway cluster init`)") from exc
            print(f"{topo.partition_queue(p):<16} {ok.message_count:>8} {ok.consumer_count:>9}")
    finally:
        if conn.is_open:
            conn.close()
    return 0

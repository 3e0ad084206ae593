"""``lora-gateway cluster ...``: the broker side of a gateway cluster behind RabbitMQ.

``cluster init`` declares the topology (``plugins.sources.rabbitmq.topology``) and may be run
any number of times; ``cluster status`` lists the partition queues with their ready messages
and consumers. Connection settings come from ``--config`` (its first ``rabbitmq`` source)
or from the flags, flags winning.
"""

from __future__ import annotations

import argparse
from typing import Any

from models.cli.errors import UserError


def add_commands(sub: Any) -> None:
    cluster = sub.add_parser("cluster", help="gateway cluster behind RabbitMQ: declare and inspect the partition queues")
    csub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    for name, func, text in (("init", _init, "declare the exchanges, bindings and partition queues (idempotent)"),
                             ("status", _status, "partition queues: ready messages, consumers")):
        p = csub.add_parser(name, help=text)
        p.add_argument("--config", help="gateway config whose first rabbitmq source gives the settings")
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--vhost")
        p.add_argument("--username")
        p.add_argument("--password-env", help="environment variable holding the password")
        p.add_argument("--prefix", help="name prefix of the cluster's exchanges and queues (default lora)")
        p.add_argument("--partitions", type=int, help="number of partition queues (default 16)")
        p.set_defaults(func=func)
    cluster.set_defaults(func=lambda args: (cluster.print_help(), 2)[1])


def _options(args: argparse.Namespace) -> Any:
    from plugins.sources.rabbitmq.options import RabbitSourceOptions

    base: dict[str, Any] = {}
    if args.config:
        from pathlib import Path

        from gateway.cli.run import load_everything

        cfg, _, _ = load_everything(Path(args.config))
        found = [opts for kind, _, opts in cfg.source_options if kind == "rabbitmq"]
        if not found:
            raise UserError(f"{args.config} has no [[sources]] entry with type = \"rabbitmq\"")
        base = found[0].model_dump()
    for flag, key in (("host", "host"), ("port", "port"), ("vhost", "vhost"), ("username", "username"),
                      ("password_env", "password_env"), ("prefix", "prefix"), ("partitions", "partitions")):
        value = getattr(args, flag)
        if value is not None:
            base[key] = value
    try:
        return RabbitSourceOptions(**base)
    except ValueError as exc:
        raise UserError(f"cluster settings: {exc}") from exc


def _connect(options: Any) -> Any:
    import pika
    import pika.exceptions

    try:
        params = pika.ConnectionParameters(host=options.host, port=options.port, virtual_host=options.vhost,
                                           credentials=pika.PlainCredentials(options.username, options.password()),
                                           connection_attempts=1)
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
        raise UserError(f"cannot connect to RabbitMQ at {options.host}:{options.port}: {type(exc).__name__} {exc}") from exc


def _topology(options: Any) -> Any:
    from plugins.sources.rabbitmq.topology import Topology

    return Topology(prefix=options.prefix, partitions=options.partitions, source_exchange=options.source_exchange,
                    binding_key=options.binding_key)


def _init(args: argparse.Namespace) -> int:
    import pika.exceptions

    from plugins.sources.rabbitmq.topology import TopologyError, declare

    options = _options(args)
    conn = _connect(options)
    try:
        for line in declare(conn, _topology(options)):
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

    options = _options(args)
    topo = _topology(options)
    conn = _connect(options)
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

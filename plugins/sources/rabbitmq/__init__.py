"""The ``rabbitmq`` source: gateways as workers of a cluster behind RabbitMQ.

- ``topology``: the broker objects (consistent-hash exchange, partition and snapshot queues)
  and ``declare`` (``lora-gateway cluster init``, ``cli``);
- ``assignment``: which worker owns which partition (balanced, from the live members);
- ``snapshot``: the partition snapshot a new owner restores before consuming;
- ``source``: the worker (``RabbitSource``); ``plugin`` registers it.

pika is imported only when a rabbitmq source starts or a ``cluster`` command runs
(the ``[cluster]`` extra); docs/deployment-rabbitmq.md is the operator's page.
"""

import logging

# pika logs every connection step at INFO and the broker's answer to a passive declare of
# a missing queue (how the topology is checked) at WARNING; this package reports what
# matters itself, one line each.
logging.getLogger("pika").setLevel(logging.CRITICAL)

"""The ``rabbitmq`` source: gateways as workers of a cluster behind RabbitMQ.

- ``assignment``: which worker owns which partition (balanced, from the live members);
- ``snapshot``: the partition snapshot (full or delta) a new owner restores before consuming;
- ``partition``: one partition's bookkeeping and the broker reads around it;
- ``source``: the worker (``RabbitSource``); ``plugin`` registers it; ``options`` its settings.

The broker objects are declared by ``lora-gateway cluster init`` (``gateway.cluster.topology``).

pika is imported only when a rabbitmq source is created or a ``cluster`` command runs
(the ``[cluster]`` extra); docs/deployment-rabbitmq.md is the operator's page.
"""

import logging

# pika logs every connection step at INFO and the broker's answer to a passive declare of
# a missing queue (how the topology is checked) at WARNING; this package reports what
# matters itself, one line each.
logging.getLogger("pika").setLevel(logging.CRITICAL)

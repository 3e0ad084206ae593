"""A gateway cluster behind RabbitMQ: the broker-side layout (``topology``), shared by
``lora-gateway cluster`` and the ``rabbitmq`` source plugin (``plugins/sources/rabbitmq``)."""

"""Registers the ``rabbitmq`` source type (the source module, and pika, load on first use)."""

from __future__ import annotations

from typing import Any

from gateway.contracts import PluginContext
from gateway.hookspecs import hookimpl
from plugins.sources.rabbitmq.options import RabbitSourceOptions


def _factory(name: str, options: RabbitSourceOptions, context: PluginContext) -> Any:
    try:
        from plugins.sources.rabbitmq.source import RabbitSource
    except ImportError as exc:
        raise RuntimeError(f"the rabbitmq source needs pika: pip install 'lora-edge-gateway[cluster]' ({exc})") from exc
    return RabbitSource(name, options, context)


@hookimpl
def lora_gateway_register_sources(register: Any) -> None:
    register("rabbitmq", _factory, RabbitSourceOptions)

"""Loads plugins: the built-ins in DEFAULT_PLUGINS, then the ``lora_gateway`` entry points.

Built-ins are registered exactly as third-party plugins are. ``LORA_GATEWAY_PLUGINS``
(comma-separated plugin names) limits which load; the config's ``plugins.allow`` list
limits third-party entry points. A plugin that fails to import raises PluginError naming it.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from collections.abc import Callable, Iterable

import pluggy
from pydantic import BaseModel

from gateway import hookspecs
from gateway.contracts import AlertHandler, PluginContext, Source

SourceFactory = Callable[[str, BaseModel, PluginContext], Source]
"""Builds a source from its instance name, validated options and the gateway's context."""
HandlerFactory = Callable[[str, BaseModel, PluginContext], AlertHandler]
"""Builds an alert handler from its instance name, validated options and the context."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "plugins.decoders.network_server",
    "plugins.decoders.json_payload",
    "plugins.decoders.cayenne_lpp",
    "plugins.decoders.dragino_lht65",
    "plugins.decoders.dragino_lse01",
    "plugins.decoders.milesight_em300",
    "plugins.sources.mqtt.source",
    "plugins.sources.rabbitmq.plugin",
    "plugins.sources.serial_source",
    "plugins.handlers.log_handler",
    "plugins.handlers.file_handler",
    "plugins.handlers.mqtt_handler",
    "plugins.handlers.webhook_handler",
    "plugins.handlers.homeassistant_handler",
)

ENTRY_POINT_GROUP = "lora_gateway"


class PluginError(Exception):
    """A plugin could not be imported or registered."""


def short_name(module_name: str) -> str:
    """A built-in's name for ``LORA_GATEWAY_PLUGINS``: the module path below its kind folder,
    dots as underscores (``plugins.sources.mqtt.source`` -> ``mqtt_source``)."""
    return "_".join(module_name.split(".")[2:])


def _wanted(name: str) -> bool:
    limit = os.environ.get("LORA_GATEWAY_PLUGINS")
    if not limit:
        return True
    return name in {p.strip() for p in limit.split(",") if p.strip()}


def make_plugin_manager(
    allow_entry_points: Iterable[str] | None = None, load_entry_points: bool = True
) -> pluggy.PluginManager:
    """Return a PluginManager with built-ins and (allowed) entry-point plugins registered.

    ``allow_entry_points``: None loads every entry point; a list loads only those names.
    Raises PluginError when a plugin fails to import or implements an unknown hook.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        if not _wanted(short_name(module_name)):
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # built-in not present in this build
                continue
            raise PluginError(f'Error importing plugin "{module_name}": {exc}') from exc
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin's name
            raise PluginError(f'Error importing plugin "{module_name}": {exc}') from exc
        pm.register(module, name=module_name)
    if load_entry_points:
        allowed = None if allow_entry_points is None else set(allow_entry_points)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            if not _wanted(ep.name) or pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f'Error importing plugin "{ep.name}": {exc}') from exc
            pm.register(plugin, name=ep.name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


class Registry:
    """Source and alert-handler types collected from the register hooks."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.sources: dict[str, tuple[SourceFactory, type[BaseModel]]] = {}
        self.handlers: dict[str, tuple[HandlerFactory, type[BaseModel]]] = {}

        def add_source(name: str, factory: SourceFactory, options_model: type[BaseModel]) -> None:
            self.sources[name] = (factory, options_model)

        def add_handler(name: str, factory: HandlerFactory, options_model: type[BaseModel]) -> None:
            self.handlers[name] = (factory, options_model)

        pm.hook.lora_gateway_register_sources(register=add_source)
        pm.hook.lora_gateway_register_alert_handlers(register=add_handler)
        self.codecs: list[str] = sorted({c for cs in pm.hook.lora_gateway_codecs() for c in cs})

"""Hook specifications: the extension points of lora-edge-gateway.

A plugin is a module or object with functions named like these, marked with
``gateway.hookspecs.hookimpl``. Built-in plugins (``plugins/``) and third-party ones
(entry-point group ``lora_gateway``) are registered by the same path (gateway.plugin_manager).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gateway.types import RawUplink

PROJECT = "lora_gateway"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def lora_gateway_register_sources(register: Callable[..., None]) -> None:
    """Register source types: ``register(name, factory, options_model)``.

    ``factory(name: str, options, context) -> gateway.contracts.Source``; ``options_model``
    is a pydantic model (extra keys forbidden) validating the source's config table.
    Returns nothing; all implementations are called.
    """


@hookspec
def lora_gateway_register_alert_handlers(register: Callable[..., None]) -> None:
    """Register alert handler types: ``register(name, factory, options_model)``.

    ``factory(name: str, options, context) -> gateway.contracts.AlertHandler``.
    Returns nothing; all implementations are called.
    """


@hookspec(firstresult=True)
def lora_gateway_decode(uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
    """Decode ``uplink`` into ``{field: value}`` (values numbers, or nested dicts/strings).

    ``codec`` is the decoder the device profile asks for, or None for "auto". Return None
    when the payload is not yours (wrong codec name, or not recognisably your format in
    auto mode); raise ``gateway.types.DecodeError(reason)`` when it is yours but invalid.
    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def lora_gateway_decode_batch(uplinks: list[RawUplink], codec: str) -> list[dict[str, Any] | None] | None:
    """Optional: decode a chunk's uplinks of one named ``codec`` at once (the pipeline's
    chunk path). Return one entry per uplink, in order: its fields (as
    ``lora_gateway_decode`` would return them), or None to leave that uplink to
    ``lora_gateway_decode`` (do that for an invalid one: its error is raised there). Return
    None when ``codec`` is not yours. Only the plugin that lists ``codec`` is asked.
    """


@hookspec
def lora_gateway_codecs() -> list[str]:
    """Return the codec names this plugin decodes (for ``--codec`` and profiles)."""
    return []


@hookspec
def lora_gateway_message_shapes() -> list[str]:
    """Names of the JSON message shapes this plugin parses (``decode --shape``); ``auto``
    means "detect it"."""
    return []


@hookspec(firstresult=True)
def lora_gateway_parse_message(topic: str | None, body: bytes, shape: str) -> RawUplink | None:
    """Parse one network-server message (a topic and a JSON body) into a RawUplink.

    Return None when ``shape`` is not one of yours; raise ValueError with a one-line reason
    when it is yours but the message is malformed. Stops at the first non-None result.
    """

"""Decoder ``network_server``: the object the LoRaWAN network server already decoded.

ChirpStack's ``object`` (v3 ``objectJSON``) and The Things Stack's ``decoded_payload`` arrive
in ``RawUplink.decoded`` (see plugins.sources.mqtt.shapes). This plugin returns that dict as is:
field names are whatever the network server's payload codec produced (e.g.
``temperatureSensor``, nested ``{"Device Status": {...}}``); device profiles map them to
channels (``ProfileConfig.channels``), and nested dicts become dotted names there.

Contract: auto mode (codec None) runs this decoder first; it returns None when the uplink
carries no (or an empty) decoded object. With ``codec="network_server"`` a missing object
raises ``DecodeError("no_network_server_object")``.
"""

from __future__ import annotations

from typing import Any

from gateway.hookspecs import hookimpl
from gateway.types import DecodeError, RawUplink

CODEC = "network_server"


@hookimpl(tryfirst=True)
def lora_gateway_decode(uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
    """Return a shallow copy of ``uplink.decoded`` when it is a non-empty dict."""
    if codec is not None and codec != CODEC:
        return None
    decoded = uplink.decoded
    if isinstance(decoded, dict) and decoded:
        return dict(decoded)
    if codec == CODEC:
        raise DecodeError("no_network_server_object")
    return None


@hookimpl
def lora_gateway_codecs() -> list[str]:
    return [CODEC]

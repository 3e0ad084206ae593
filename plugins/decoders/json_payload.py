"""Decoder ``json``: payload bytes that are one UTF-8 JSON object.

Output: the object itself (``{"temperature": 21.5, "probe": {"depth": 3}}``), field names
as the device sent them; nested objects become dotted channel names in the profile step.
Numbers stay numbers (ints and floats), strings and booleans are kept but are never channels.

Contract: ``decode_json(data) -> dict`` raises DecodeError (``not_json``, ``not_object``,
``non_finite`` for NaN/Infinity or numbers that overflow a float). In auto mode the
plugin only claims payloads whose first non-blank byte is ``{`` and that parse; anything
else returns None so later decoders (Cayenne LPP) can try.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.hookspecs import hookimpl
from gateway.types import DecodeError, RawUplink
from plugins.decoders._common import fail

CODEC = "json"
_MAX_BYTES = 65536


def _no_constant(name: str) -> Any:
    raise fail("non_finite", name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise fail("non_finite", text[:32])
    return value


def decode_json(data: bytes) -> dict[str, Any]:
    """Parse ``data`` as a JSON object; raise DecodeError when it is not one."""
    if len(data) > _MAX_BYTES:
        raise fail("too_large", f"{len(data)} bytes")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant,
                         parse_float=_finite_float)
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise fail("not_json", str(exc)[:80]) from exc
    if not isinstance(obj, dict):
        raise fail("not_object", type(obj).__name__)
    return obj


@hookimpl
def lora_gateway_decode(uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
    if codec is None:
        if not uplink.payload.lstrip()[:1] == b"{":
            return None
        try:
            return decode_json(uplink.payload)
        except DecodeError:
            return None
    if codec != CODEC:
        return None
    return decode_json(uplink.payload)


@hookimpl
def lora_gateway_codecs() -> list[str]:
    return [CODEC]

"""Typed field readers for uplink JSON: each returns the value or raises UplinkShapeError
with a reason code, so a malformed message is one counted reject (``bad_field``,
``bad_base64``, ...) and never an exception of another kind. Shared by the shape parsers
(``plugins.sources.mqtt.shapes``) and the RabbitMQ source, which carries the same bodies."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from datetime import UTC, datetime
from typing import Any

HEX16 = re.compile(r"[0-9a-fA-F]{16}")
HEX_BYTES = re.compile(r"(?:[0-9a-fA-F]{2})*")
ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(Z|z|[+-]\d{2}:?\d{2})?"
)


class UplinkShapeError(ValueError):
    """A message that is not a usable uplink; ``reason`` is a short machine code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def topic_matches(pattern: str, topic: str) -> bool:
    """True when MQTT ``topic`` matches subscription ``pattern`` (``+`` and ``#`` wildcards)."""
    p_parts, t_parts = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p_parts):
        if part == "#":
            return i == len(p_parts) - 1
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(p_parts) == len(t_parts)


# -- small typed accessors; each raises UplinkShapeError("bad_field") on a wrong type ---


def field_obj(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UplinkShapeError("bad_field", f"{name} is not an object")
    return value


def field_list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise UplinkShapeError("bad_field", f"{name} is not a list")
    return value


def field_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UplinkShapeError("bad_field", f"{name} is not a string")
    return value


def field_int(value: Any, name: str, lo: int = 0, hi: int = 2**63) -> int | None:
    """An integer (or an integral number or numeric string, as proto JSON sends int64)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UplinkShapeError("bad_field", f"{name} is a boolean")
    if isinstance(value, str):
        if not re.fullmatch(r"-?\d{1,19}", value):
            raise UplinkShapeError("bad_field", f"{name} is not an integer")
        value = int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise UplinkShapeError("bad_field", f"{name} is not an integer")
        value = int(value)
    if not isinstance(value, int) or not lo <= value <= hi:
        raise UplinkShapeError("bad_field", f"{name} out of range")
    return value


def field_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UplinkShapeError("bad_field", f"{name} is not a number")
    try:
        f = float(value)
    except OverflowError as exc:
        raise UplinkShapeError("bad_field", f"{name} overflows") from exc
    if not math.isfinite(f):
        raise UplinkShapeError("bad_field", f"{name} is not finite")
    return f


def field_b64(value: Any, name: str) -> bytes:
    text = field_str(value, name)
    if not text:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UplinkShapeError("bad_base64", name) from exc


def field_hex(value: Any, name: str) -> bytes:
    text = (field_str(value, name) or "").replace(" ", "")
    if not HEX_BYTES.fullmatch(text):
        raise UplinkShapeError("bad_hex", name)
    return bytes.fromhex(text)


def field_dev_eui(value: Any, name: str) -> str:
    text = field_str(value, name)
    if not text:
        raise UplinkShapeError("missing_device_id", name)
    if not HEX16.fullmatch(text):
        raise UplinkShapeError("bad_device_id", name)
    return text.lower()


_SECONDS: dict[str, float] = {}
"""UNIX seconds of recently seen ``YYYY-MM-DDTHH:MM:SS`` prefixes (a backlog's messages share
them); bounded by ``_SECONDS_MAX``, cleared when full."""
_SECONDS_MAX = 4096


def parse_time(value: Any) -> float | None:
    """ISO 8601 string (any fraction length, ``Z`` or offset; no zone = UTC) or UNIX
    seconds -> UNIX seconds; None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            f = float(value)
        except OverflowError:
            return None
        return f if math.isfinite(f) and f >= 0 else None
    if not isinstance(value, str):
        return None
    m = ISO_TIME.fullmatch(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    whole = value.strip()[:19]  # the date and time to the second: many messages share it
    ts = _SECONDS.get(whole)
    if ts is None:
        try:
            ts = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                          tzinfo=UTC).timestamp()
        except ValueError:
            return None
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        _SECONDS[whole] = ts
    if frac:
        ts += int(frac[:9]) / 10 ** len(frac[:9])
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:]) * 60
        ts -= sign * offset
    return ts


class NotJsonNumber(ValueError):
    """A number JSON does not allow (``NaN``, ``Infinity``) or one that overflows a float."""


def no_json_constant(name: str) -> Any:
    raise NotJsonNumber(f"{name} is not a number JSON allows")


def finite_float(s: str) -> float:
    f = float(s)
    if not math.isfinite(f):
        raise NotJsonNumber("number overflows a float")
    return f


# one decoder for every message (json.loads with hooks would build a new one per call)
JSON_DECODER = json.JSONDecoder(parse_constant=no_json_constant, parse_float=finite_float)


def loads_json(text: str | bytes, reason: str) -> Any:
    try:
        if not isinstance(text, str):
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        return JSON_DECODER.decode(text)
    except NotJsonNumber as exc:
        raise UplinkShapeError(reason, str(exc)) from exc
    except (ValueError, RecursionError, TypeError) as exc:
        raise UplinkShapeError(reason, str(exc)[:80]) from exc

"""A small, safe binary encoding for per-device state trees (no pickle).

A tree holds None, bool, int (any size), float (NaN and inf included), str, lists,
str-keyed dicts, numpy arrays, ``array.array`` and instances of dataclasses named in an
allow-list. ``pack(tree) -> bytes`` and ``unpack(data, classes) -> tree`` are inverses;
``unpack`` builds only the dataclasses it is given (by qualified name) and raises
``StateFormatError`` on anything else, a damaged blob, or a dataclass whose fields differ
from the stored ones (the caller then treats that part as absent: it recalibrates).

Layout: ``b"LGT1"``, u32 header length, the header (JSON, the tree with arrays replaced
by ``{"$nd": i}``), then the arrays' raw bytes back to back in header order.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from array import array
from typing import Any

import numpy as np

MAGIC = b"LGT1"
_LEN = struct.Struct("<I")


class StateFormatError(ValueError):
    """A state blob that cannot be read back (damaged, or written by other code)."""


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def pack(tree: Any) -> bytes:
    arrays: list[np.ndarray] = []

    def enc(obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            arrays.append(arr)
            return {"$nd": len(arrays) - 1, "dt": arr.dtype.str, "sh": list(arr.shape)}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, array):
            return {"$arr": obj.typecode, "v": obj.tolist()}
        if isinstance(obj, (list, tuple)):
            return [enc(v) for v in obj]
        if isinstance(obj, dict):
            return {"$d": [[k, enc(v)] for k, v in obj.items()]}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {"$dc": _qualname(type(obj)), "f": {name: enc(getattr(obj, name)) for name in _fields(type(obj))}}
        raise TypeError(f"cannot encode {type(obj).__name__} in a state blob")

    header = json.dumps(enc(tree), separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, _LEN.pack(len(header)), header, *(a.tobytes() for a in arrays)])


def unpack(data: bytes, classes: dict[str, type] | None = None, changed: list[str] | None = None) -> Any:
    """The tree ``pack`` wrote; dataclasses only from ``classes`` (qualified name -> class).

    A stored dataclass whose fields differ from the class's today (the code changed) is
    read as None and its name appended to ``changed`` (when given; else it raises
    StateFormatError): that part of the state is then rebuilt, the rest is kept."""
    classes = classes or {}
    if len(data) < 8 or data[:4] != MAGIC:
        raise StateFormatError("not a state blob")
    (hlen,) = _LEN.unpack_from(data, 4)
    try:
        header = json.loads(data[8:8 + hlen])
    except ValueError as exc:
        raise StateFormatError(f"damaged header: {exc}") from exc
    view = memoryview(data)
    offset = 8 + hlen

    def dec(obj: Any) -> Any:
        nonlocal offset
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if "$nd" in obj:
            dtype = np.dtype(obj["dt"])
            if dtype.hasobject:
                raise StateFormatError("object arrays are not state")
            shape = tuple(obj["sh"])
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + size > len(data):
                raise StateFormatError("array data cut short")
            arr = np.frombuffer(view[offset:offset + size], dtype=dtype).reshape(shape).copy()
            offset += size
            return arr
        if "$arr" in obj:
            return array(obj["$arr"], obj["v"])
        if "$d" in obj:
            return {k: dec(v) for k, v in obj["$d"]}
        if "$dc" in obj:
            cls = classes.get(obj["$dc"])
            if cls is None:
                raise StateFormatError(f"class {obj['$dc']} is not allowed here")
            stored = obj["f"]
            names = {f.name for f in dataclasses.fields(cls)}
            values = {name: dec(value) for name, value in stored.items()}  # consumes its arrays either way
            if set(stored) != names:
                if changed is None:
                    raise StateFormatError(f"{obj['$dc']} fields changed: {sorted(set(stored) ^ names)}")
                changed.append(obj["$dc"])
                return None
            inst: Any = object.__new__(cls)
            for name, value in values.items():
                object.__setattr__(inst, name, value)
            return inst
        raise StateFormatError("unknown node in a state blob")

    return dec(header)

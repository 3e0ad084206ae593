"""The wire between the MQTT receive process and the scoring process: whole chunks, columns.

With ``receive_process = true`` (``plugins.sources.mqtt.process``) a child process receives
and parses; every received chunk (one socket read's worth of messages) crosses a pipe as ONE
message, never one message per uplink. Every message is a tuple encoded with ``marshal``
(C speed, no code objects involved: only str, bytes, int, float, None, tuples, lists and
JSON-shaped dicts). Both ends are the same interpreter and the same source tree (the child
is spawned from the parent's ``sys.executable``), so the marshal version always matches; the
format is internal and never stored.

Messages, child -> parent:

- ``(CHUNK, chunk_id, columns, counters, gauges)``: the uplinks of one received chunk as
  ``columns`` (``COLUMNS``: one list per field, all of the chunk's length), plus the metric
  changes since the last message (``counters``: ``(name, labels, amount)``; ``gauges``:
  ``(name, labels, value)``; labels a tuple of ``(key, value)`` pairs).
- ``(STATE, connected, auth_failed, counters, gauges)``: the broker connection changed.
- ``(LOG, levelno, logger_name, text)``: one log record of the child.
- ``(BYE, counters, gauges)``: the child stopped cleanly (sent last).

Parent -> child:

- ``(ACK, chunk_id, ok)``: the chunk is durable (``ok``; the child sends its PUBACKs) or its
  commit failed (the child drops the PUBACKs and reconnects so the broker redelivers).
  Replies come in chunk order.
- ``(STOP,)``: finish the chunks in flight, disconnect, send ``BYE``, exit.
"""

from __future__ import annotations

import marshal
from typing import Any

from gateway.types import RadioMeta, RawUplink

CHUNK = "c"
STATE = "s"
LOG = "l"
BYE = "b"
ACK = "a"
STOP = "x"

COLUMNS: tuple[str, ...] = (
    "device_id", "received_at", "payload", "f_port", "f_cnt",
    "rssi", "snr", "spreading_factor", "frequency_hz", "bandwidth_hz", "gateway_id",
    "decoded", "device_name", "shape", "dedup_id",
)
"""The order of a chunk's columns (``RawUplink`` and ``RadioMeta`` field names)."""

Columns = tuple[list[Any], ...]
MetricDelta = list[tuple[str, tuple[tuple[str, str], ...], float]]


def encode(message: tuple[Any, ...]) -> bytes:
    """One pipe message as bytes (``marshal``; see the module docstring)."""
    return marshal.dumps(message, 4)


def decode(data: bytes) -> tuple[Any, ...]:
    """The inverse of ``encode``; ValueError (or EOFError/TypeError) on damaged bytes."""
    message = marshal.loads(data)
    if not isinstance(message, tuple) or not message:
        raise ValueError("not a pipe message")
    return message


def pack_uplinks(uplinks: list[RawUplink]) -> Columns:
    """The chunk's uplinks as columns (``COLUMNS`` order). ``source`` and ``seq`` are not
    sent: the parent names the source, and the ingest log assigns ``seq``."""
    radios = [u.radio for u in uplinks]
    return (
        [u.device_id for u in uplinks], [u.received_at for u in uplinks], [u.payload for u in uplinks],
        [u.f_port for u in uplinks], [u.f_cnt for u in uplinks],
        [r.rssi for r in radios], [r.snr for r in radios], [r.spreading_factor for r in radios],
        [r.frequency_hz for r in radios], [r.bandwidth_hz for r in radios], [r.gateway_id for r in radios],
        [u.decoded for u in uplinks], [u.device_name for u in uplinks], [u.shape for u in uplinks],
        [u.dedup_id for u in uplinks],
    )


def unpack_uplinks(columns: Columns, source: str) -> list[RawUplink]:
    """RawUplinks again from ``pack_uplinks``' columns, each named after ``source``.
    ValueError when the columns do not have the expected count or equal lengths."""
    if len(columns) != len(COLUMNS):
        raise ValueError(f"a chunk needs {len(COLUMNS)} columns, got {len(columns)}")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError("a chunk's columns differ in length")
    (ids, times, payloads, ports, counts, rssi, snr, sf, freq, bw, gw, decoded, names, shapes, dedup) = columns
    return [
        RawUplink(d, t, p, fp, fc, RadioMeta(r, s, f, hz, b, g), o, nm, source, sh, x)
        for d, t, p, fp, fc, r, s, f, hz, b, g, o, nm, sh, x
        in zip(ids, times, payloads, ports, counts, rssi, snr, sf, freq, bw, gw, decoded, names, shapes, dedup,
               strict=True)
    ]

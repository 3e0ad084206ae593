"""Device state in and out of the running pipeline, for sources that own devices in turns
(the ``rabbitmq`` source of a gateway cluster: ``gateway.contracts.PartitionedSource``).

``PipelineHandoff`` is what ``Gateway.start`` binds to such a source:

- ``call(fn)``: run ``fn`` on the pipeline thread after every uplink handed on before it
  (``Pipeline.call_soon``); the other methods must run inside such a call;
- ``dump(device_ids) -> bytes``: the devices' state (window, standardisation, score profile,
  alert-policy state) through the device-state codec, one record per device with its id
  (``b"LGH1"`` | per device: u16 id length, id, u32 record length, codec record);
  ``b""`` when the gateway has no codec;
- ``restore(blobs)``: install dumps, oldest first, replacing what is held for those
  devices; a device in several of them is installed once, from the newest (a full
  snapshot and the deltas after it cost one install per device);
- ``forget(device_ids)``: drop the devices' state (another gateway owns them now, so what
  this one holds would be stale when they come back); ``forget_all()``: every device's;
- ``sync()``: make what the pipeline has taken so far durable where the gateway keeps it
  (the reading recorder's writes), before the source acknowledges it.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.metrics import Metrics
from gateway.pipeline.loop import Pipeline

log = logging.getLogger(__name__)

_MAGIC = b"LGH1"
_ID = struct.Struct("<H")
_REC = struct.Struct("<I")


class HandoffFormatError(ValueError):
    """A dump that cannot be read (cut short, or not a dump)."""


def split_dump(blob: bytes) -> list[tuple[str, bytes]]:
    """(device id, codec record) pairs of a ``dump``; raises HandoffFormatError."""
    if blob[:4] != _MAGIC:
        raise HandoffFormatError("not a device-state dump")
    out: list[tuple[str, bytes]] = []
    pos, end = 4, len(blob)
    while pos < end:
        if pos + 2 > end:
            raise HandoffFormatError("device id cut short")
        (n,) = _ID.unpack_from(blob, pos)
        device_id = blob[pos + 2:pos + 2 + n].decode("utf-8", "replace")
        pos += 2 + n
        if pos + 4 > end:
            raise HandoffFormatError("record length cut short")
        (m,) = _REC.unpack_from(blob, pos)
        if pos + 4 + m > end:
            raise HandoffFormatError("record cut short")
        out.append((device_id, blob[pos + 4:pos + 4 + m]))
        pos += 4 + m
    return out


class PipelineHandoff:
    """See the module docstring. ``codec``: an object with ``dump_devices(ids) -> bytes`` and
    ``restore_devices(blob)`` (the device-state codec), or None; ``recorder``: an object with
    ``flush(timeout) -> bool``, or None."""

    def __init__(self, pipeline: Pipeline, metrics: Metrics, codec: Any = None, recorder: Any = None) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.codec = codec
        self.recorder = recorder
        metrics.describe("handoff_dump_seconds_total", "Pipeline time spent dumping device state for a handoff")
        metrics.describe("handoff_restore_seconds_total", "Pipeline time spent installing handed-over device state")
        metrics.describe("handoff_devices_forgotten_total", "Devices dropped because another gateway owns them now")
        if codec is None:
            log.warning("no device-state codec: a partition handoff moves frame counters only, "
                        "and the new owner's devices calibrate again")

    def call(self, fn: Callable[[], None]) -> None:
        self.pipeline.call_soon(fn)

    def dump(self, device_ids: Iterable[str]) -> bytes:
        if self.codec is None:
            return b""
        t0 = time.perf_counter()
        key = self.codec.model_key()
        parts = [_MAGIC]
        for device_id in device_ids:
            record = self.codec.dump_device(device_id, key)
            if record is not None:
                raw = device_id.encode("utf-8")
                parts += [_ID.pack(len(raw)), raw, _REC.pack(len(record)), record]
        self.metrics.inc("handoff_dump_seconds_total", time.perf_counter() - t0)
        return b"".join(parts)

    def restore(self, blobs: list[bytes]) -> None:
        if self.codec is None:
            return
        t0 = time.perf_counter()
        newest: dict[str, bytes] = {}
        unreadable = 0
        for blob in blobs:
            if not blob:
                continue
            try:
                newest.update(split_dump(blob))
            except HandoffFormatError as exc:
                unreadable += 1
                log.error("a handed-over state dump is unreadable (%s); its devices calibrate again", exc)
        from gateway.state.codec import RestoreReport

        report = RestoreReport()
        key = self.codec.model_key()
        for record in newest.values():
            self.codec.restore_device(record, report, key)
        took = time.perf_counter() - t0
        self.metrics.inc("handoff_restore_seconds_total", took)
        if unreadable:
            self.metrics.inc("handoff_dumps_unreadable_total", unreadable)
        for note in report.notes[:5]:
            log.warning("handed-over state: %s", note)
        log.info("handed-over state installed in %.3f s from %d dump(s): %s", took, len(blobs), report.summary())

    def forget(self, device_ids: Iterable[str]) -> None:
        ids = list(device_ids)
        if self.codec is not None:
            known = self.codec.forget_devices(ids)
        else:
            known = sum([self.pipeline.windows.remove(d) or self.pipeline.policy.remove_device(d) for d in ids])
        self.metrics.inc("handoff_devices_forgotten_total", known)

    def forget_all(self) -> None:
        """Drop every device's state (a cluster worker before it owns any partition)."""
        self.forget([w.device_id for w in self.pipeline.windows.devices()] + self.pipeline.policy.device_ids())

    def sync(self) -> None:
        if self.recorder is not None and not self.recorder.flush(5.0):
            log.warning("recorder did not write within 5 s before an acknowledgement")

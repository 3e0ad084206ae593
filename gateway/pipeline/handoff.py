"""Device state in and out of the running pipeline, for sources that own devices in turns
(the ``rabbitmq`` source of a gateway cluster: ``gateway.contracts.PartitionedSource``).

``PipelineHandoff`` is what ``Gateway.start`` binds to such a source:

- ``call(fn)``: run ``fn`` on the pipeline thread after every uplink handed on before it
  (``Pipeline.call_soon``); the other methods must run inside such a call;
- ``dump(device_ids) -> bytes``: the devices' state (window, standardisation, score profile,
  alert-policy state) through the device-state codec; ``b""`` when the gateway has none;
- ``restore(blob)``: install a dump, replacing what is held for those devices;
- ``forget(device_ids)``: drop the devices' state (another gateway owns them now, so what
  this one holds would be stale when they come back); ``forget_all()``: every device's;
- ``sync()``: make what the pipeline has taken so far durable where the gateway keeps it
  (the reading recorder's writes), before the source acknowledges it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.metrics import Metrics
from gateway.pipeline.loop import Pipeline

log = logging.getLogger(__name__)


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
        blob: bytes = self.codec.dump_devices(device_ids)
        self.metrics.inc("handoff_dump_seconds_total", time.perf_counter() - t0)
        return blob

    def restore(self, blob: bytes) -> None:
        if self.codec is None or not blob:
            return
        t0 = time.perf_counter()
        report = self.codec.restore_devices(blob)
        took = time.perf_counter() - t0
        self.metrics.inc("handoff_restore_seconds_total", took)
        summary = report.summary() if hasattr(report, "summary") else str(report)
        log.info("handed-over state installed in %.3f s: %s", took, summary)

    def forget(self, device_ids: Iterable[str]) -> None:
        ids = list(device_ids)
        known = self.pipeline.windows.forget(ids)
        self.pipeline.policy.forget(ids)
        self.metrics.inc("handoff_devices_forgotten_total", known)

    def forget_all(self) -> None:
        """Drop every device's state (a cluster worker before it owns any partition)."""
        self.forget([w.device_id for w in self.pipeline.windows.devices()] + self.pipeline.policy.device_ids())

    def sync(self) -> None:
        if self.recorder is not None and not self.recorder.flush(5.0):
            log.warning("recorder did not write within 5 s before an acknowledgement")

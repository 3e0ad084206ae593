"""Quarantine: uplinks no decoder understood, kept with their raw bytes and the reason.

Appended as JSON lines to ``<state_dir>/quarantine.jsonl``, bounded by size: when the file
passes ``max_bytes`` it is rotated to ``quarantine.jsonl.1`` (one generation kept), so the
disk use stays under twice the budget. Every entry is also counted
(``uplinks_quarantined_total{reason}``), so nothing is dropped silently even if the disk
write fails (then ``quarantine_write_failures_total`` counts it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from gateway.metrics import Metrics
from gateway.types import RawUplink

log = logging.getLogger(__name__)


class Quarantine:
    def __init__(self, path: Path | None, metrics: Metrics, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.path = path
        self.metrics = metrics
        self.max_bytes = max_bytes

    def put(self, uplink: RawUplink, reason: str, detail: str = "") -> None:
        """Keep ``uplink`` with ``reason`` (a short machine word) and an optional detail."""
        self.metrics.inc("uplinks_quarantined_total", reason=reason)
        log.debug("quarantined uplink from %s: %s %s", uplink.device_id, reason, detail)
        if self.path is None:
            return
        entry = {
            "device_id": uplink.device_id,
            "received_at": uplink.received_at,
            "f_port": uplink.f_port,
            "f_cnt": uplink.f_cnt,
            "source": uplink.source,
            "shape": uplink.shape,
            "payload_hex": uplink.payload.hex(),
            "reason": reason,
            "detail": detail[:500],
        }
        try:
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as exc:
            self.metrics.inc("quarantine_write_failures_total")
            log.warning("could not write quarantine file %s: %s", self.path, exc)

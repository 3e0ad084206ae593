"""Per-device state as bytes: what the gateway knows about a device, moved across a restart
(``gateway.state.checkpoint``) or to another gateway (a partition handoff).

API (stable; other modules build on it):

- ``DeviceStateCodec(windows, engine, policy)`` binds the three owners of device state: the
  window store (``gateway.pipeline.windows``: the ring of recent readings, last seen), the
  inference engine (``gateway.pipeline.inference``: the channel standardisation, or the
  calibration still in progress, and the score profile) and the alert policy
  (``gateway.alerts.policy``: every rule's raise/clear lifecycle, rate-limit history,
  learnt reporting interval, last frame counter).
- ``dump_devices(device_ids) -> bytes``: one blob holding every listed device the gateway
  knows (unknown ids are skipped). ``dump_device(device_id) -> bytes | None``: one device.
- ``restore_devices(blob) -> RestoreReport`` / ``restore_device(blob, report)``: install
  the devices of a blob, replacing what the gateway holds for them. Call from the thread
  that owns the pipeline (or before it starts).
- ``forget_devices(device_ids) -> int``: drop the listed devices from all three owners
  (after handing them to another gateway); the next checkpoint deletes their rows.
- ``model_key()``: identity of the serving model and its score settings. State dumped under
  another key keeps what does not depend on the model (window, standardisation, last seen,
  alert-policy state); the score profile is dropped and re-learnt from the device's next
  ``calibration_windows`` scored windows (the report counts these as ``recalibrating``).

Every call runs on the pipeline's thread (or with the pipeline stopped): the owners are
not locked against each other. Blobs are safe to read from disk (no pickle; only the
known state classes are built; a damaged blob raises ``StateFormatError``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.alerts.policy import AlertPolicy
from gateway.pipeline.inference import InferenceEngine
from gateway.pipeline.windows import WindowStore
from gateway.state.tree import StateFormatError, pack, unpack

__all__ = ["CODEC_VERSION", "DeviceStateCodec", "RestoreReport", "StateFormatError"]

CODEC_VERSION = 1
_MULTI = b"LGM1"
_LEN = struct.Struct("<I")


@dataclass
class RestoreReport:
    """What a restore installed (counts of devices)."""

    devices: int = 0
    windows: int = 0
    standardised: int = 0  # channel standardisation (or its calibration in progress) kept
    score_profiles: int = 0  # calibrated score profiles kept
    recalibrating: int = 0  # score profile dropped (other model or settings): re-learnt from scored windows
    policy: int = 0
    skipped: int = 0  # unreadable device records
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.devices} devices: {self.windows} windows, {self.standardised} standardisations, "
                f"{self.score_profiles} score profiles kept, {self.recalibrating} recalibrating, "
                f"{self.policy} alert-policy states, {self.skipped} unreadable")


class DeviceStateCodec:
    """See the module docstring."""

    def __init__(self, windows: WindowStore, engine: InferenceEngine, policy: AlertPolicy) -> None:
        self.windows = windows
        self.engine = engine
        self.policy = policy

    def model_key(self) -> str:
        """16 hex digits over the serving model's manifest and the scorer's settings."""
        ident = json.dumps({"manifest": self.engine.runtime.manifest, "settings": self.engine.scorer.settings},
                           sort_keys=True, default=str)
        return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:16]

    def model_ref(self) -> str:
        manifest = self.engine.runtime.manifest
        return f"{manifest.get('name', '?')}@{manifest.get('version', '?')}"

    # ---- dumping --------------------------------------------------------------------
    def device_tree(self, device_id: str, model_key: str | None = None) -> dict[str, Any] | None:
        """The state of one device as a tree (``gateway.state.tree``), None when unknown."""
        window = self.windows.get(device_id)
        policy = self.policy.export_device(device_id)
        if window is None and policy is None:
            return None
        return {"v": CODEC_VERSION, "id": device_id, "model": model_key or self.model_key(),
                "window": None if window is None else window.export_state(),
                "engine": None if window is None else self.engine.export_device(window),
                "policy": policy}

    def dump_device(self, device_id: str, model_key: str | None = None) -> bytes | None:
        tree = self.device_tree(device_id, model_key)
        return None if tree is None else pack(tree)

    def dump_devices(self, device_ids: Iterable[str]) -> bytes:
        key = self.model_key()
        parts = [_MULTI]
        for device_id in device_ids:
            one = self.dump_device(device_id, key)
            if one is not None:
                parts += [_LEN.pack(len(one)), one]
        return b"".join(parts)

    def forget_devices(self, device_ids: Iterable[str]) -> int:
        """Drop the devices from windows, engine and policy; returns how many were known."""
        n = 0
        for device_id in device_ids:
            known = self.windows.remove(device_id)
            known = self.policy.remove_device(device_id) or known
            n += known
        return n

    # ---- restoring ------------------------------------------------------------------
    def restore_devices(self, blob: bytes) -> RestoreReport:
        if blob[:4] != _MULTI:
            raise StateFormatError("not a multi-device state blob")
        report = RestoreReport()
        key = self.model_key()
        pos = 4
        while pos < len(blob):
            if pos + 4 > len(blob):
                raise StateFormatError("device record cut short")
            (n,) = _LEN.unpack_from(blob, pos)
            self.restore_device(blob[pos + 4:pos + 4 + n], report, key)
            pos += 4 + n
        return report

    def restore_device(self, blob: bytes, report: RestoreReport | None = None, model_key: str | None = None) -> str | None:
        """Install one device's state; returns its id (None when the record is unreadable,
        counted in ``report.skipped``)."""
        report = report if report is not None else RestoreReport()
        try:
            changed: list[str] = []
            tree = unpack(blob, self.policy.state_classes() | self.engine.state_classes(), changed)
            for name in changed:
                note = f"stored {name} has other fields than this version's: rebuilt"
                if note not in report.notes:
                    report.notes.append(note)
            if not isinstance(tree, dict) or tree.get("v") != CODEC_VERSION:
                raise StateFormatError("other codec version")
            device_id = str(tree["id"])
        except (StateFormatError, KeyError, TypeError, ValueError) as exc:
            report.skipped += 1
            report.notes.append(f"unreadable device record: {exc}")
            return None
        same_model = tree.get("model") == (model_key or self.model_key())
        report.devices += 1
        if tree.get("policy") is not None:
            self.policy.import_device(device_id, tree["policy"])
            report.policy += 1
        window_state = tree.get("window")
        if window_state is not None:
            window = self.windows.import_window(device_id, window_state)
            if window is not None:
                report.windows += 1
                kept = self.engine.import_device(window, tree.get("engine"), keep_score=same_model)
                if kept.standardised:
                    report.standardised += 1
                if kept.score_profile:
                    report.score_profiles += 1
                elif kept.recalibrating:
                    report.recalibrating += 1
        return device_id

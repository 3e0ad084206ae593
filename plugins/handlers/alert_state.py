"""Per-device alert state for retained MQTT state topics (shared by mqtt and homeassistant).

``DeviceAlertStates.apply(alert)`` folds one raise/clear into the device's state and returns
the JSON document to publish retained on ``<prefix>/<device_id>/state``:

    {"device_id": "...", "state": "problem" | "ok",
     "alerts": {"<kind>": {"state": "raised"|"cleared", "severity": ..., "since": ts,
                           "key": ..., "message": ...}},
     "updated_at": ts}

Bounded: at most ``max_devices`` devices, the least recently updated forgotten first. State
lives in memory: after a restart a device's document starts again from its next alert.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from gateway.types import Alert


class DeviceAlertStates:
    """Thread-safe, bounded map device -> {kind: last alert event}."""

    def __init__(self, max_devices: int = 10000) -> None:
        self.max_devices = max_devices
        self._states: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def initial(self, device_id: str, timestamp: float) -> dict[str, Any] | None:
        """The ``ok`` document of a device with no alert yet (recorded, so it is given once),
        or None when the device already has a state."""
        with self._lock:
            if device_id in self._states:
                return None
            self._states[device_id] = {}
            while len(self._states) > self.max_devices:
                self._states.popitem(last=False)
            return {"device_id": device_id, "state": "ok", "alerts": {}, "updated_at": timestamp}

    def apply(self, alert: Alert) -> dict[str, Any]:
        """Record ``alert`` and return the device's whole state document."""
        with self._lock:
            kinds = self._states.get(alert.device_id)
            if kinds is None:
                kinds = self._states[alert.device_id] = {}
                while len(self._states) > self.max_devices:
                    self._states.popitem(last=False)
            self._states.move_to_end(alert.device_id)
            kinds[alert.kind] = {"state": alert.state, "severity": alert.severity, "since": alert.timestamp,
                                 "key": alert.key, "message": alert.message}
            problem = any(k["state"] == "raised" for k in kinds.values())
            return {"device_id": alert.device_id, "state": "problem" if problem else "ok",
                    "alerts": {k: dict(v) for k, v in kinds.items()}, "updated_at": alert.timestamp}

"""What the status page shows, kept as it happens: a bounded, thread-safe view of devices,
recent readings and scores, and alert events.

The pipeline thread feeds it (it is a ``ReadingObserver`` and a ``ScoreObserver``; the
daemon's alert publisher calls ``on_alert``); the HTTP thread reads it (``devices``, ``device_chart``,
``recent_alerts``). Everything is bounded:

- a summary per device (last seen, battery, RSSI/SNR, last score, open alerts) for at most
  ``max_devices`` devices, the least recently seen dropped beyond that;
- chart history (the last ``history_points`` readings and scores, alert spans) for at most
  ``chart_devices`` devices: the first ones seen, and a device that raises an alert takes
  the place of the longest-silent one without an open alert, so a faulty device always
  has its chart;
- the last ``max_alerts`` alert events.

Nothing here touches the pipeline's own structures: the page reads only this copy.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from gateway.types import Alert, RawUplink, Reading

MAX_SPANS = 16


@dataclass(slots=True)
class DeviceSummary:
    """The page's row of one device; every field optional until first seen."""

    device_id: str
    device_name: str | None = None
    last_seen: float | None = None  # wall clock (UNIX seconds) when the reading arrived
    reading_time: float | None = None  # the reading's own timestamp
    readings: int = 0
    scores: int = 0
    battery: float | None = None
    rssi: float | None = None
    snr: float | None = None
    score: float | None = None
    score_channel: str | None = None
    open_alerts: dict[str, Alert] = field(default_factory=dict)  # kind -> its raise


@dataclass(slots=True)
class ChartHistory:
    """Recent readings (per channel) and scores of one device, in its readings' time."""

    channels: list[str]
    times: array = field(default_factory=lambda: array("d"))
    values: dict[str, array] = field(default_factory=dict)
    score_times: array = field(default_factory=lambda: array("d"))
    scores: array = field(default_factory=lambda: array("d"))
    spans: deque[list[Any]] = field(default_factory=lambda: deque(maxlen=MAX_SPANS))  # [kind, start, end|None]


def _push(arr: array, value: float, limit: int) -> None:
    if len(arr) >= limit:
        del arr[: len(arr) - limit + 1]
    arr.append(value)


class StatusTracker:
    """Bounded, thread-safe store of what the status page shows (see module docstring)."""

    def __init__(self, *, history_points: int = 720, chart_devices: int = 64, max_devices: int = 10000,
                 max_alerts: int = 200, calibration_steps: int | None = None) -> None:
        self.history_points = history_points
        self.chart_devices = chart_devices
        self.max_devices = max_devices
        self.calibration_steps = calibration_steps
        self._lock = threading.Lock()
        self._devices: OrderedDict[str, DeviceSummary] = OrderedDict()
        self._charts: dict[str, ChartHistory] = {}
        self._alerts: deque[Alert] = deque(maxlen=max_alerts)
        self.started = time.time()

    # ---- fed by the pipeline -----------------------------------------------------------
    def observe_reading(self, reading: Reading, profile: Any, uplink: RawUplink) -> None:
        """ReadingObserver: charts the profile's model channels, takes its battery field."""
        field = getattr(profile, "battery_field", None)
        mapped = getattr(profile, "channels", None)
        channels = list(mapped) if mapped else sorted(c for c in reading.values if c != field)
        self.on_reading(reading, channels, reading.values.get(field) if field else None)

    def observe_score(self, device_id: str, timestamp: float, score: float, details: dict[str, Any]) -> None:
        """ScoreObserver: one window's score and its top channel."""
        self.on_score(device_id, timestamp, score, details.get("channel"))

    def on_reading(self, reading: Reading, channels: list[str], battery: float | None = None) -> None:
        """One accepted reading; ``channels`` are the model channels charted for it."""
        with self._lock:
            dev = self._devices.get(reading.device_id)
            if dev is None:
                dev = self._devices[reading.device_id] = DeviceSummary(reading.device_id)
                if len(self._devices) > self.max_devices:
                    old, _ = self._devices.popitem(last=False)
                    self._charts.pop(old, None)
            else:
                self._devices.move_to_end(reading.device_id)
            dev.device_name = reading.device_name or dev.device_name
            dev.last_seen = time.time()
            dev.reading_time = reading.timestamp
            dev.readings += 1
            if battery is not None:
                dev.battery = battery
            if reading.radio.rssi is not None:
                dev.rssi = reading.radio.rssi
            if reading.radio.snr is not None:
                dev.snr = reading.radio.snr
            chart = self._chart(reading.device_id, channels, claim=False)
            if chart is None:
                return
            limit = self.history_points
            _push(chart.times, reading.timestamp, limit)
            for c in chart.channels:
                series = chart.values.setdefault(c, array("d"))
                v = reading.values.get(c)
                _push(series, float("nan") if v is None else v, limit)

    def on_score(self, device_id: str, timestamp: float, score: float, channel: str | None = None) -> None:
        """One window score (the alert policy's input) of a calibrated device."""
        with self._lock:
            dev = self._devices.get(device_id)
            if dev is None:
                return
            dev.score = score
            dev.score_channel = channel
            dev.scores += 1
            chart = self._charts.get(device_id)
            if chart is not None:
                _push(chart.score_times, timestamp, self.history_points)
                _push(chart.scores, score, self.history_points)

    def on_alert(self, alert: Alert) -> None:
        """One alert event (raise or clear) as the policy emitted it."""
        with self._lock:
            self._alerts.append(alert)
            dev = self._devices.get(alert.device_id)
            if dev is None:
                dev = self._devices[alert.device_id] = DeviceSummary(alert.device_id)
            if alert.state == "raised":
                dev.open_alerts[alert.kind] = alert
                chart = self._chart(alert.device_id, None, claim=True)
                if chart is not None:
                    chart.spans.append([alert.kind, alert.timestamp, None])
            else:
                dev.open_alerts.pop(alert.kind, None)
                chart = self._charts.get(alert.device_id)
                if chart is not None:
                    for span in reversed(chart.spans):
                        if span[0] == alert.kind and span[2] is None:
                            span[2] = alert.timestamp
                            break

    def _chart(self, device_id: str, channels: list[str] | None, claim: bool) -> ChartHistory | None:
        chart = self._charts.get(device_id)
        if chart is not None:
            if channels is not None and chart.channels != channels:
                chart.channels = list(channels)
            return chart
        if len(self._charts) >= self.chart_devices:
            if not claim:
                return None
            victim = self._victim()
            if victim is None:
                return None
            del self._charts[victim]
        chart = self._charts[device_id] = ChartHistory(list(channels or []))
        return chart

    def _victim(self) -> str | None:
        """The charted device that has gone longest without a reading and has no open alert."""
        best: tuple[float, str] | None = None
        for dev_id in self._charts:
            dev = self._devices.get(dev_id)
            if dev is None:
                return dev_id
            if dev.open_alerts:
                continue
            seen = dev.last_seen or 0.0
            if best is None or seen < best[0]:
                best = (seen, dev_id)
        return best[1] if best else None

    # ---- read by the page --------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        """One plain dict per device, sorted by id (numbers numerically)."""
        with self._lock:
            rows = [self._row(d) for d in self._devices.values()]
        return sorted(rows, key=lambda r: (0, int(r["device_id"]), "") if r["device_id"].isdigit() else (1, 0, r["device_id"]))

    def _row(self, d: DeviceSummary) -> dict[str, Any]:
        if d.scores:
            calibration = "scoring"
        elif self.calibration_steps:
            calibration = f"learning ({min(d.readings, self.calibration_steps)}/{self.calibration_steps} readings)"
        else:
            calibration = "learning"
        return {"device_id": d.device_id, "device_name": d.device_name, "last_seen": d.last_seen,
                "reading_time": d.reading_time, "readings": d.readings, "battery": d.battery, "rssi": d.rssi,
                "snr": d.snr, "score": d.score, "score_channel": d.score_channel, "calibration": calibration,
                "open_alerts": sorted(d.open_alerts), "charted": d.device_id in self._charts}

    def device(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            d = self._devices.get(device_id)
            return None if d is None else self._row(d)

    def device_chart(self, device_id: str) -> dict[str, Any] | None:
        """A copy of one device's chart history, or None when it has none."""
        with self._lock:
            chart = self._charts.get(device_id)
            if chart is None:
                return None
            return {"channels": list(chart.channels), "times": chart.times.tolist(),
                    "values": {c: v.tolist() for c, v in chart.values.items() if c in chart.channels},
                    "score_times": chart.score_times.tolist(), "scores": chart.scores.tolist(),
                    "spans": [tuple(s) for s in chart.spans]}

    def recent_alerts(self, device_id: str | None = None, limit: int = 50) -> list[Alert]:
        """The newest alert events first."""
        with self._lock:
            alerts = [a for a in reversed(self._alerts) if device_id is None or a.device_id == device_id]
        return alerts[:limit]

    def find_alert(self, key: str) -> Alert | None:
        with self._lock:
            for a in self._alerts:
                if a.key == key:
                    return a
        return None

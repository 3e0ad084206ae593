"""The alert policy: model scores and readings in, raise/clear Alert events out.

Pure and fast: no I/O, no threads of its own, time taken from the timestamps it is given
(reading and window times, ``now`` for the silence check), so the same inputs always give
the same alerts and the same idempotency keys. One lock makes the methods safe to call
from several threads (the pipeline and a silence timer).

Every (device, kind) has a lifecycle: *normal* -> (debounced condition) -> *raised* ->
(debounced recovery) -> *normal*. Only the two transitions produce an Alert; while raised,
no second raise is emitted (dedup). Kinds:

- ``anomaly``: model score >= raise_threshold for raise_after windows; cleared after
  clear_after windows below clear_threshold (hysteresis between the two).
- ``battery_low``, ``link_quality``, ``frame_gap``: rules on readings (``on_reading``).
- ``device_silent``: ``check_silent(now)``; cleared by the device's next reading.

Raises are rate limited (min_interval_s per (device, kind), max_alerts_per_device_per_hour
per device). A limited raise is *held back*, not lost: the lifecycle stays normal, the
suppression is counted once per episode (``alerts_suppressed_total{reason}``), and the raise
is emitted on a later input if the condition still holds. Clears are never limited, so a
receiver never keeps a stale raised state.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.alerts.policy_config import AlertPolicyConfig
from gateway.metrics import Metrics
from gateway.types import Alert, AlertState, Reading

__all__ = ["AlertPolicy", "AlertPolicyConfig", "alert_key"]

Severity = Literal["info", "warning", "critical"]
KINDS = ("anomaly", "battery_low", "link_quality", "frame_gap", "device_silent")
_KIND_BIT = {kind: 1 << i for i, kind in enumerate(KINDS)}
_HOUR = 3600.0
_INTERVAL_HISTORY = 16


def _battery_unit(reading: Reading, value: float) -> str:
    """Volts when the value came from a voltage-named channel, else percent."""
    for name, v in reading.values.items():
        if v == value:
            low = name.lower()
            if low.endswith("_v") or "volt" in low or low in ("bat_v", "vbat", "vbatt"):
                return "V"
    return "%"


def alert_key(device_id: str, kind: str, state: AlertState, episode_start: float) -> str:
    """Idempotency key of one alert event: 32 hex digits of sha256 over its identity.

    The same (device, kind, state, episode start) always gives the same key, so a replayed
    or re-generated event is recognisably the same event.
    """
    ident = f"{device_id}\x1f{kind}\x1f{state}\x1f{episode_start:.6f}"
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]


@dataclass(slots=True)
class _Track:
    """Lifecycle of one (device, kind)."""

    raised: bool = False
    run: int = 0  # consecutive inputs pushing towards the other state
    run_start: float | None = None  # timestamp of the first input of that run
    episode_start: float = 0.0
    held: bool = False  # a raise is being held back by a rate limit (counted once)
    last_raise: float | None = None
    channel: str | None = None  # the channel named by the raise; its clear names the same one


def _link_message(rssi: float | None, snr: float | None) -> str:
    """``link quality low: median RSSI -121 dBm, SNR -7.5 dB``: the medians with ``%g``
    (they are floats); one not taken (its rule disabled, no values) is left out."""
    medians = ([] if rssi is None else [f"RSSI {rssi:g} dBm"]) + ([] if snr is None else [f"SNR {snr:g} dB"])
    return "link quality low: median " + ", ".join(medians)


def _push_bounded(values: array | None, value: float, limit: int) -> array:
    """Append ``value`` to a flat float array holding at most ``limit`` values (oldest
    dropped); creates the array on first use."""
    if values is None:
        return array("d", (value,))
    if len(values) >= limit:
        del values[: len(values) - limit + 1]
    values.append(value)
    return values


@dataclass(slots=True)
class _Device:
    """Everything the policy remembers about one device (bounded, and small: the policy
    keeps up to ``max_devices`` of these). A kind's ``_Track`` is created the first time
    its condition pushes (until then it would hold only defaults), ``seen`` remembers which
    kinds had an input (``raised()`` lists them), and the recent-value windows are flat
    float arrays created on first use (an empty deque alone is 760 bytes)."""

    tracks: dict[str, _Track] | None = None
    seen: int = 0  # one _KIND_BIT per kind that had an input
    raises: list[float] | None = None  # raise times within the last hour, at most the hourly limit
    last_seen: float | None = None
    intervals: array | None = None  # the last _INTERVAL_HISTORY reading intervals
    expected_interval_s: float | None = None
    rssi: array | None = None  # the last link_window values
    snr: array | None = None
    last_fcnt: int | None = None

    def track(self, kind: str) -> _Track:
        """The kind's track, created (with defaults) if it has none yet."""
        tracks = self.tracks
        if tracks is None:
            tracks = self.tracks = {}
        t = tracks.get(kind)
        if t is None:
            t = tracks[kind] = _Track()
        self.seen |= _KIND_BIT[kind]
        return t

    def existing_track(self, kind: str) -> _Track | None:
        return self.tracks.get(kind) if self.tracks else None


class AlertPolicy:
    """Turns scores and readings into raise/clear alerts; see the module docstring."""

    def __init__(self, config: AlertPolicyConfig | None = None, metrics: Metrics | None = None) -> None:
        # unset anomaly thresholds fall back to the scoring defaults; the daemon passes a
        # config already resolved against the serving model's manifest
        self.config = (config or AlertPolicyConfig()).resolved()
        self.metrics = metrics or Metrics()
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        self._lock = threading.Lock()
        self.metrics.describe("alerts_raised_total", "Alerts raised, by kind")
        self.metrics.describe("alerts_cleared_total", "Alerts cleared, by kind")
        self.metrics.describe("alerts_suppressed_total", "Raises held back by a rate limit, by reason")
        self.metrics.describe("alert_policy_evictions_total", "Devices forgotten to bound memory")
        self.metrics.describe("alert_policy_fcnt_resets_total", "Frame counters re-based after a device reset")

    # ------------------------------------------------------------------ public API

    def set_expected_interval(self, device_id: str, seconds: float | None) -> None:
        """Set (or with None, unset) a device's expected reporting interval from its profile."""
        with self._lock:
            self._device(device_id).expected_interval_s = seconds

    def on_score(self, device_id: str, timestamp: float, score: float,
                 details: dict[str, Any] | None = None) -> list[Alert]:
        """Feed one model score of one window; return the ``anomaly`` alerts it causes (0 or 1)."""
        c = self.config
        with self._lock:
            dev = self._device(device_id)
            severity: Severity = "critical" if score >= c.raise_threshold * c.critical_factor else "warning"
            extra = {"score": score, "raise_threshold": c.raise_threshold,
                     "clear_threshold": c.clear_threshold, **(details or {})}
            bad = score >= c.raise_threshold
            alert = self._step(device_id, dev, "anomaly", timestamp,
                               bad=bad, good=score < c.clear_threshold,
                               raise_after=c.raise_after, clear_after=c.clear_after,
                               severity=severity, score=score, details=extra,
                               message=f"anomaly score {score:.3g} (threshold {c.raise_threshold:g})" if bad else "")
            return [alert] if alert else []

    def on_reading(self, reading: Reading, battery_value: float | None = None,
                   battery_unit: Literal["%", "V"] | None = None) -> list[Alert]:
        """Feed one decoded reading; return rule alerts (battery_low, link_quality, frame_gap,
        and the clear of device_silent when a silent device speaks again).

        ``battery_value`` is the battery level the pipeline picked from the reading's channels
        (None when the device reports none); ``battery_unit`` says whether it is a percentage
        or volts. When the unit is None it is inferred from the channel the value came from:
        volts for a channel named ``*_v``, ``*volt*`` or ``bat_v``, else percent.
        """
        with self._lock:
            dev = self._device(reading.device_id)
            ts = reading.timestamp
            out: list[Alert] = []
            self._learn_interval(dev, ts)
            silent = dev.existing_track("device_silent")
            if silent is not None:
                silent.held = False
            if silent is not None and silent.raised:
                out.append(self._emit(reading.device_id, dev, "device_silent", silent, "cleared", ts,
                                      self.config.clear_severity, "device reporting again", None, {}))
            if battery_value is not None:
                unit = battery_unit or _battery_unit(reading, battery_value)
                self._battery(reading.device_id, dev, ts, battery_value, unit, out)
            self._link(reading, dev, out)
            self._frame_gap(reading, dev, out)
            return out

    def check_silent(self, now: float) -> list[Alert]:
        """Raise ``device_silent`` for every device quiet for longer than its limit at ``now``.

        The limit is max(silent_min_s, silent_factor * usual interval); the usual interval is
        the profile's expected_interval_s, else the median of the device's recent intervals
        (after silent_learn_intervals of them). Devices with no usable interval are skipped.
        """
        c = self.config
        out: list[Alert] = []
        with self._lock:
            for device_id, dev in self._devices.items():
                if dev.last_seen is None:
                    continue
                interval = self._usual_interval(dev)
                if interval is None:
                    continue
                limit = max(c.silent_min_s, c.silent_factor * interval)
                quiet = now - dev.last_seen
                if quiet <= limit:
                    continue
                track = dev.track("device_silent")
                if track.raised:
                    continue
                # The episode starts when the device went quiet: stable across repeated checks.
                track.run_start = dev.last_seen
                track.run = 1
                alert = self._try_raise(device_id, dev, "device_silent", track, now, "warning",
                                        f"no reading for {quiet:.0f} s (usual interval {interval:.0f} s)",
                                        None, {"last_seen": dev.last_seen, "usual_interval_s": interval,
                                               "limit_s": limit})
                if alert:
                    out.append(alert)
        return out

    def raised(self, device_id: str) -> dict[str, bool]:
        """Which kinds are currently raised for a device (for status pages and tests)."""
        with self._lock:
            dev = self._devices.get(device_id)
            if dev is None:
                return {}
            out: dict[str, bool] = {}
            for kind in KINDS:
                if dev.seen & _KIND_BIT[kind]:
                    t = dev.existing_track(kind)
                    out[kind] = t is not None and t.raised
            return out

    def device_ids(self) -> list[str]:
        """Every device the policy holds state for."""
        with self._lock:
            return list(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    # ------------------------------------------------------------------ state (gateway.state.codec)

    def export_device(self, device_id: str) -> _Device | None:
        """The policy's live state of one device (not a copy: encode it before the next input)."""
        with self._lock:
            return self._devices.get(device_id)

    def import_device(self, device_id: str, dev: Any) -> bool:
        """Install a device's state (from ``export_device``, decoded) as its most recent one."""
        if not isinstance(dev, _Device) or (dev.tracks is not None and not all(
                isinstance(t, _Track) for t in dev.tracks.values())):
            return False
        with self._lock:
            self._devices[device_id] = dev
            self._devices.move_to_end(device_id)
            while len(self._devices) > self.config.max_devices:
                self._devices.popitem(last=False)
                self.metrics.inc("alert_policy_evictions_total")
        return True

    def remove_device(self, device_id: str) -> bool:
        """Forget a device's state (handed to another gateway)."""
        with self._lock:
            return self._devices.pop(device_id, None) is not None

    @staticmethod
    def state_classes() -> dict[str, type]:
        """The classes of the policy's device state, for ``gateway.state.tree.unpack``."""
        return {f"{c.__module__}.{c.__qualname__}": c for c in (_Device, _Track)}

    # ------------------------------------------------------------------ rules

    def _battery(self, device_id: str, dev: _Device, ts: float, value: float, unit: str,
                 out: list[Alert]) -> None:
        c = self.config
        if unit == "V":
            low, critical, margin = c.battery_low_v, c.battery_critical_v, c.battery_hysteresis_v
        else:
            low, critical, margin = c.battery_low, c.battery_critical, c.battery_hysteresis
        severity: Severity = "critical" if value < critical else "warning"
        bad = value < low
        alert = self._step(device_id, dev, "battery_low", ts, bad=bad,
                           good=value >= low + margin, raise_after=1,
                           clear_after=1, severity=severity, score=None,
                           details={"battery": value, "unit": unit, "threshold": low},
                           message=f"battery {value:g} {unit} below {low:g} {unit}" if bad else "")
        if alert:
            out.append(alert)

    def _link(self, reading: Reading, dev: _Device, out: list[Alert]) -> None:
        c = self.config
        k = c.link_window
        if reading.radio.rssi is not None and c.rssi_floor is not None:
            dev.rssi = _push_bounded(dev.rssi, reading.radio.rssi, k)
        if reading.radio.snr is not None and c.snr_floor is not None:
            dev.snr = _push_bounded(dev.snr, reading.radio.snr, k)
        rssi = statistics.median(dev.rssi) if dev.rssi is not None and len(dev.rssi) >= k else None
        snr = statistics.median(dev.snr) if dev.snr is not None and len(dev.snr) >= k else None
        if rssi is None and snr is None:
            return
        low_rssi = rssi is not None and c.rssi_floor is not None and rssi < c.rssi_floor
        low_snr = snr is not None and c.snr_floor is not None and snr < c.snr_floor
        ok_rssi = rssi is None or c.rssi_floor is None or rssi >= c.rssi_floor + c.link_hysteresis_db
        ok_snr = snr is None or c.snr_floor is None or snr >= c.snr_floor + c.link_hysteresis_db
        bad = low_rssi or low_snr
        alert = self._step(reading.device_id, dev, "link_quality", reading.timestamp,
                           bad=bad, good=ok_rssi and ok_snr, raise_after=1,
                           clear_after=1, severity="warning", score=None,
                           details={"median_rssi": rssi, "median_snr": snr, "rssi_floor": c.rssi_floor,
                                    "snr_floor": c.snr_floor, "window": k},
                           message=_link_message(rssi, snr) if bad else "")
        if alert:
            out.append(alert)

    def _frame_gap(self, reading: Reading, dev: _Device, out: list[Alert]) -> None:
        if reading.f_cnt is None:
            return
        lost = self._lost_frames(dev, reading.f_cnt)
        if lost is None:  # first frame, duplicate, or reset: no evidence either way
            return
        c = self.config
        alert = self._step(reading.device_id, dev, "frame_gap", reading.timestamp,
                           bad=lost > c.fcnt_gap, good=lost <= c.fcnt_gap, raise_after=1,
                           clear_after=c.clear_after, severity="warning", score=None,
                           details={"lost_frames": lost, "f_cnt": reading.f_cnt, "fcnt_gap": c.fcnt_gap},
                           message=f"{lost} uplinks lost before frame {reading.f_cnt}")
        if alert:
            out.append(alert)

    def _lost_frames(self, dev: _Device, fcnt: int) -> int | None:
        """Frames lost between the previous counter and ``fcnt``; None when not judgeable."""
        last, dev.last_fcnt = dev.last_fcnt, fcnt
        if last is None:
            return None
        if fcnt > last:
            return fcnt - last - 1
        if fcnt == last:  # duplicate (retransmission, second gateway): keep the counter
            return None
        # The counter went backwards: a wrap of a 16-bit (or 32-bit) counter, or a reset.
        for bits in (16, 32):
            modulus = 1 << bits
            if last < modulus:
                delta = (fcnt - last) % modulus
                if 0 < delta <= self.config.fcnt_max_plausible_gap:
                    return delta - 1
        self.metrics.inc("alert_policy_fcnt_resets_total")
        return None

    # ------------------------------------------------------------------ lifecycle

    def _step(self, device_id: str, dev: _Device, kind: str, ts: float, *, bad: bool, good: bool,
              raise_after: int, clear_after: int, severity: Severity, score: float | None,
              details: dict[str, Any], message: str) -> Alert | None:
        """Advance the (device, kind) lifecycle by one input; return the alert of a transition.
        ``message`` is read only when this input raises, which needs ``bad``: callers pass ""
        otherwise and format nothing per reading."""
        t = dev.existing_track(kind)
        if t is None:
            dev.seen |= _KIND_BIT[kind]
            if not bad:  # a fresh track would stay as it is: create none
                return None
            t = dev.track(kind)
        pushing = good if t.raised else bad
        if not pushing:
            t.run, t.run_start = 0, None
            if not t.raised:
                t.held = False  # the condition went away: a held-back raise is dropped
            return None
        if t.run == 0:
            t.run_start = ts
        t.run += 1
        if t.raised:
            if t.run < clear_after:
                return None
            return self._emit(device_id, dev, kind, t, "cleared", ts, self.config.clear_severity,
                              f"{kind} cleared", score, details)
        if t.run < raise_after:
            return None
        return self._try_raise(device_id, dev, kind, t, ts, severity, message, score, details)

    def _try_raise(self, device_id: str, dev: _Device, kind: str, t: _Track, ts: float,
                   severity: Severity, message: str, score: float | None,
                   details: dict[str, Any]) -> Alert | None:
        c = self.config
        reason = None
        if t.last_raise is not None and ts - t.last_raise < c.min_interval_s:
            reason = "min_interval"
        else:
            raises = dev.raises
            while raises and ts - raises[0] >= _HOUR:
                raises.pop(0)
            if raises and len(raises) >= c.max_alerts_per_device_per_hour:
                reason = "hourly_limit"
        if reason is not None:
            if not t.held:
                t.held = True
                self.metrics.inc("alerts_suppressed_total", reason=reason)
            return None
        t.held = False
        t.last_raise = ts
        if dev.raises is None:
            dev.raises = []
        dev.raises.append(ts)
        return self._emit(device_id, dev, kind, t, "raised", ts, severity, message, score, details)

    def _emit(self, device_id: str, dev: _Device, kind: str, t: _Track, state: AlertState, ts: float,
              severity: Severity, message: str, score: float | None, details: dict[str, Any]) -> Alert:
        if state == "raised":
            t.raised = True
            t.episode_start = t.run_start if t.run_start is not None else ts
            t.channel = details.get("channel")
            self.metrics.inc("alerts_raised_total", kind=kind)
        else:
            t.raised = False
            if t.channel is not None:
                # the clearing window's top channel is whichever is least calm now (often
                # another one): the clear names the raised channel, the other goes aside
                details = {**details, "channel": t.channel, "top_channel_at_clear": details.get("channel")}
            self.metrics.inc("alerts_cleared_total", kind=kind)
        t.run, t.run_start = 0, None
        return Alert(device_id=device_id, kind=kind, state=state, severity=severity, timestamp=ts,
                     message=message, key=alert_key(device_id, kind, state, t.episode_start),
                     score=score, details={**details, "episode_start": t.episode_start})

    # ------------------------------------------------------------------ device state

    def _device(self, device_id: str) -> _Device:
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device()
            while len(self._devices) > self.config.max_devices:
                self._devices.popitem(last=False)
                self.metrics.inc("alert_policy_evictions_total")
        else:
            self._devices.move_to_end(device_id)
        return dev

    def _learn_interval(self, dev: _Device, ts: float) -> None:
        if dev.last_seen is not None and ts > dev.last_seen:
            dev.intervals = _push_bounded(dev.intervals, ts - dev.last_seen, _INTERVAL_HISTORY)
        if dev.last_seen is None or ts > dev.last_seen:
            dev.last_seen = ts

    def _usual_interval(self, dev: _Device) -> float | None:
        if dev.expected_interval_s:
            return dev.expected_interval_s
        if dev.intervals is None or len(dev.intervals) < self.config.silent_learn_intervals:
            return None
        return float(statistics.median(dev.intervals))


def anomaly_flags(scores: Iterable[float], config: AlertPolicyConfig) -> list[bool]:
    """Whether an ``anomaly`` alert is raised after each score of one series, under this
    policy's raise/clear lifecycle (the daemon's own mechanism, for ``model score`` and
    ``model eval``). Scores are fed in order, one per step; NaN (an unscored window)
    changes nothing. Rate limits use the step index as seconds, so disable them in
    ``config`` when flags should reflect detection only."""
    policy = AlertPolicy(config)
    raised = False
    out: list[bool] = []
    for step, score in enumerate(scores):
        if not math.isnan(score):
            for alert in policy.on_score("series", float(step), score):
                raised = alert.state == "raised"
        out.append(raised)
    return out

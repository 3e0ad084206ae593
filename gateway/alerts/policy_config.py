"""Configuration of the alert policy (``[alert_policy]`` in the gateway config).

One pydantic model, unknown keys refused, every field described (the descriptions
generate the config reference). Thresholds on the model score are in *score units*:
1.0 is the model's own threshold from its manifest, so 1.2 means "20 % above it".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.scoring.settings import settings_from


class AlertPolicyConfig(BaseModel):
    """Thresholds, hysteresis, debounce, rate limits and rule alerts of the alert policy."""

    model_config = ConfigDict(extra="forbid")

    raise_threshold: float | None = Field(
        None, gt=0, description="Score at or above which a window counts as anomalous "
        "(score units: 1.0 = the model's threshold). Unset: the serving model's manifest "
        "``thresholds.raise`` (1.0 when the manifest has none), so the daemon and "
        "``lora-gateway model score`` decide alike.")
    clear_threshold: float | None = Field(
        None, ge=0, description="Score below which a window counts as normal again; lower than "
        "raise_threshold (hysteresis) so a score hovering near the threshold does not flap. "
        "Unset: the manifest's ``thresholds.clear`` (0.7 when it has none).")
    critical_factor: float = Field(
        2.0, ge=1.0, description="An anomaly is raised with severity 'critical' when its score "
        "is at least raise_threshold times this factor, else 'warning'.")
    raise_after: int | None = Field(
        None, ge=1, description="Consecutive anomalous windows needed to raise an anomaly "
        "(debounce). Unset: the manifest's ``thresholds.raise_after`` (2 when it has none).")
    clear_after: int | None = Field(
        None, ge=1, description="Consecutive normal windows needed to clear a raised anomaly, and "
        "consecutive clean readings needed to clear a raised frame_gap. Unset: the manifest's "
        "``thresholds.clear_after`` (3 when it has none).")
    min_interval_s: float = Field(
        300.0, ge=0, description="Minimum seconds between two raises of the same (device, kind); "
        "a raise inside it is held back (counted as suppressed, reason min_interval) and emitted "
        "once the interval has passed if the condition still holds. Clears are never suppressed.")
    max_alerts_per_device_per_hour: int = Field(
        12, ge=1, description="At most this many raises per device in any sliding hour, all kinds "
        "together; more are held back (counted as suppressed, reason hourly_limit).")
    silent_factor: float = Field(
        3.0, gt=1.0, description="A device is silent when it has sent nothing for longer than this "
        "many times its usual interval (learned from its own readings, or the profile's "
        "expected_interval_s).")
    silent_min_s: float = Field(
        60.0, ge=0, description="A device is never called silent before this many seconds without "
        "a reading, whatever its usual interval.")
    silent_learn_intervals: int = Field(
        3, ge=1, description="Readings intervals a device must show before its learned usual "
        "interval is trusted (devices without a profile interval are not judged before that).")
    battery_low: float = Field(
        20.0, description="battery_low is raised (warning) when a battery level in percent "
        "falls below this.")
    battery_critical: float = Field(
        10.0, description="battery_low is raised with severity 'critical' below this percentage.")
    battery_hysteresis: float = Field(
        5.0, ge=0, description="battery_low clears once the percentage is back at or above "
        "battery_low plus this margin (a battery reads higher when warm).")
    battery_low_v: float = Field(
        3.0, description="The same rule for a battery voltage (volts), used when the value is a "
        "voltage (unit 'V', or a channel named like battery_v / *_voltage).")
    battery_critical_v: float = Field(
        2.8, description="Severity 'critical' below this battery voltage.")
    battery_hysteresis_v: float = Field(
        0.1, ge=0, description="Voltage margin above battery_low_v needed to clear battery_low.")
    rssi_floor: float | None = Field(
        -120.0, description="link_quality is raised when the median RSSI (dBm) of the last "
        "link_window readings is below this floor; null disables the RSSI rule.")
    snr_floor: float | None = Field(
        -15.0, description="link_quality is raised when the median SNR (dB) of the last "
        "link_window readings is below this floor; null disables the SNR rule.")
    link_window: int = Field(
        5, ge=1, description="Readings whose median RSSI/SNR is compared with the floors; the rule "
        "waits for a full window.")
    link_hysteresis_db: float = Field(
        3.0, ge=0, description="link_quality clears once both medians are this many dB above "
        "their floors.")
    fcnt_gap: int = Field(
        10, ge=1, description="frame_gap is raised when more than this many uplinks were lost "
        "between two received frames (frame-counter gap), 16- and 32-bit wrap handled.")
    fcnt_max_plausible_gap: int = Field(
        16384, ge=1, description="A counter that went backwards is a wrap-around when the implied "
        "gap is at most this; otherwise the device was reset (re-joined) and the counter is "
        "re-based without an alert.")
    max_devices: int = Field(
        10000, ge=1, description="Devices whose state the policy keeps; beyond it the least "
        "recently seen device is forgotten (counted in alert_policy_evictions_total).")
    clear_severity: Literal["info", "warning", "critical"] = Field(
        "info", description="Severity carried by clear events.")

    @model_validator(mode="after")
    def _check_order(self) -> AlertPolicyConfig:
        if (self.clear_threshold is not None and self.raise_threshold is not None
                and self.clear_threshold > self.raise_threshold):
            raise ValueError("clear_threshold must not be above raise_threshold")
        if self.battery_critical > self.battery_low:
            raise ValueError("battery_critical must not be above battery_low")
        if self.battery_critical_v > self.battery_low_v:
            raise ValueError("battery_critical_v must not be above battery_low_v")
        return self

    def resolved(self, manifest: Any = None) -> AlertPolicyConfig:
        """A copy whose unset anomaly thresholds/debounce come from ``manifest``'s ``thresholds``
        (the same values ``lora-gateway model score`` uses), else the scoring defaults.

        Where the result would put clear_threshold above raise_threshold (a configured raise
        below the manifest's clear), clear_threshold is lowered to raise_threshold.
        """
        settings = settings_from(manifest)
        update: dict[str, Any] = {}
        for field, key, cast in (("raise_threshold", "raise", float), ("clear_threshold", "clear", float),
                                 ("raise_after", "raise_after", int), ("clear_after", "clear_after", int)):
            if getattr(self, field) is None:
                update[field] = cast(settings[key])
        out = self.model_copy(update=update)
        if out.clear_threshold > out.raise_threshold:  # type: ignore[operator]
            out = out.model_copy(update={"clear_threshold": out.raise_threshold})
        return out

    def anomaly_rule(self) -> tuple[float, float, int, int]:
        """(raise_threshold, clear_threshold, raise_after, clear_after) of a resolved config;
        ValueError when one is still unset (call ``resolved`` first)."""
        rule = (self.raise_threshold, self.clear_threshold, self.raise_after, self.clear_after)
        if any(v is None for v in rule):
            raise ValueError("the anomaly thresholds are unset: resolve the config against a manifest first")
        return float(rule[0]), float(rule[1]), int(rule[2]), int(rule[3])  # type: ignore[arg-type]

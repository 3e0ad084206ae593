"""Alert policy: hysteresis, debounce, lifecycle, keys, rate limits, rule alerts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.alerts.policy import AlertPolicy, AlertPolicyConfig, alert_key
from gateway.metrics import Metrics
from gateway.types import RadioMeta, Reading


def policy(**overrides: object) -> tuple[AlertPolicy, Metrics]:
    base: dict[str, object] = {"min_interval_s": 0, "max_alerts_per_device_per_hour": 1000}
    base.update(overrides)
    m = Metrics()
    return AlertPolicy(AlertPolicyConfig(**base), m), m


def feed(p: AlertPolicy, scores: list[float], device: str = "d1", t0: float = 1000.0, dt: float = 10.0):
    out = []
    for i, s in enumerate(scores):
        out.extend(p.on_score(device, t0 + i * dt, s, {"window": i}))
    return out


def test_config_forbids_unknown_keys_and_describes_every_field() -> None:
    with pytest.raises(ValidationError):
        AlertPolicyConfig(raise_treshold=2.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AlertPolicyConfig(raise_threshold=1.0, clear_threshold=1.5)
    for name, f in AlertPolicyConfig.model_fields.items():
        assert f.description, name


def test_debounce_needs_consecutive_windows() -> None:
    p, m = policy(raise_after=3)
    assert feed(p, [1.5, 1.5, 0.9, 1.5, 1.5]) == []  # the 0.9 breaks the run
    alerts = feed(p, [1.5], t0=2000)
    assert [(a.kind, a.state) for a in alerts] == [("anomaly", "raised")]
    assert m.get("alerts_raised_total", kind="anomaly") == 1


def test_hysteresis_and_dedup() -> None:
    p, m = policy(raise_after=2, clear_after=2, raise_threshold=1.0, clear_threshold=0.5)
    alerts = feed(p, [1.2, 1.3, 5.0, 1.1, 0.8, 0.9, 0.7, 0.4, 0.45])
    # Raised once (no second raise while raised), never cleared in the 0.5..1.0 band,
    # cleared after two windows below 0.5.
    assert [(a.state, a.timestamp) for a in alerts] == [("raised", 1010.0), ("cleared", 1080.0)]
    assert alerts[0].severity == "warning"
    assert alerts[0].score == 1.3
    assert alerts[0].details["window"] == 1
    assert alerts[1].severity == "info"
    assert p.raised("d1") == {"anomaly": False}
    assert m.get("alerts_cleared_total", kind="anomaly") == 1


def test_critical_severity() -> None:
    p, _ = policy(raise_after=1, critical_factor=2.0)
    (a,) = feed(p, [2.5])
    assert a.severity == "critical"


def test_keys_deterministic_and_distinct() -> None:
    runs = []
    for _ in range(2):
        p, _ = policy(raise_after=2, clear_after=1)
        runs.append(feed(p, [2, 2, 0, 2, 2, 0]))
    a, b = runs
    assert [x.key for x in a] == [x.key for x in b]
    assert len({x.key for x in a}) == 4  # raise/clear of two episodes
    # The key is derived from the episode start (the first anomalous window).
    assert a[0].key == alert_key("d1", "anomaly", "raised", 1000.0)
    assert a[1].key == alert_key("d1", "anomaly", "cleared", 1000.0)
    assert len(a[0].key) == 32 and int(a[0].key, 16) >= 0
    assert alert_key("d2", "anomaly", "raised", 1000.0) != a[0].key


def test_min_interval_holds_back_then_emits() -> None:
    p, m = policy(raise_after=1, clear_after=1, min_interval_s=100)
    alerts = feed(p, [2, 0, 2, 2, 2], dt=20)  # t=1000 raise, 1020 clear, 1040.. held
    assert [a.state for a in alerts] == ["raised", "cleared"]
    assert m.get("alerts_suppressed_total", reason="min_interval") == 1  # counted once
    late = p.on_score("d1", 1100.0, 2.0)
    assert [a.state for a in late] == ["raised"]
    # The held-back episode started at the first anomalous window after the clear.
    assert late[0].key == alert_key("d1", "anomaly", "raised", 1040.0)


def test_hourly_limit_across_kinds() -> None:
    p, m = policy(raise_after=1, clear_after=1, max_alerts_per_device_per_hour=2)
    states = [a.state for a in feed(p, [2, 0, 2, 0, 2, 0, 2], dt=60)]
    assert states == ["raised", "cleared", "raised", "cleared"]
    # Two held-back episodes (the 0 in between ended the first), each counted once.
    assert m.get("alerts_suppressed_total", reason="hourly_limit") == 2
    # Rule alerts of the same device share the budget.
    r = Reading("d1", 1500.0, {"t": 1.0})
    assert p.on_reading(r, battery_value=5.0) == []
    assert m.get("alerts_suppressed_total", reason="hourly_limit") == 3
    # An hour after the first raise the budget has room again.
    assert [a.kind for a in p.on_reading(Reading("d1", 4601.0, {"t": 1.0}), battery_value=5.0)] == ["battery_low"]
    # Other devices are not affected.
    assert [a.state for a in feed(p, [2], device="d2")] == ["raised"]


def test_battery_thresholds_and_hysteresis() -> None:
    p, m = policy()
    def bat(ts: float, v: float):
        return p.on_reading(Reading("b", ts, {"battery": v}), battery_value=v)
    assert bat(1, 50) == []
    (a,) = bat(2, 15)
    assert (a.kind, a.state, a.severity) == ("battery_low", "raised", "warning")
    assert bat(3, 8) == []  # dedup while raised
    assert bat(4, 22) == []  # inside the hysteresis margin (20 + 5)
    (c,) = bat(5, 26)
    assert c.state == "cleared" and c.key == alert_key("b", "battery_low", "cleared", 2)
    (crit,) = bat(6, 5)
    assert crit.severity == "critical"
    assert p.on_reading(Reading("b", 7, {"t": 1}), battery_value=None) == []


def test_battery_volts_by_unit_or_channel_name() -> None:
    p, _ = policy(battery_low_v=3.0, battery_critical_v=2.8)
    assert p.on_reading(Reading("v", 1, {"battery_v": 3.3}), battery_value=3.3) == []
    (a,) = p.on_reading(Reading("v", 2, {"battery_v": 2.7}), battery_value=2.7)
    assert (a.severity, a.details["unit"]) == ("critical", "V")
    (c,) = p.on_reading(Reading("v", 3, {"x": 3.2}), battery_value=3.2, battery_unit="V")
    assert c.state == "cleared"
    # A percentage of 3 is low; the same number as volts is not.
    (pct,) = p.on_reading(Reading("p", 1, {"battery": 3.0}), battery_value=3.0)
    assert pct.details["unit"] == "%"


def link(ts: float, rssi: float | None, snr: float | None, device: str = "l") -> Reading:
    return Reading(device, ts, {"t": 1.0}, radio=RadioMeta(rssi=rssi, snr=snr))


def test_link_quality_median_window() -> None:
    p, _ = policy(link_window=3, rssi_floor=-115, snr_floor=-10, link_hysteresis_db=3)
    out = []
    # One bad packet does not raise: the median of the window stays above the floor.
    for i, rssi in enumerate([-100, -125, -100, -101]):
        out += p.on_reading(link(i, rssi, 0))
    assert out == []
    for i, rssi in enumerate([-120, -121], start=10):
        out += p.on_reading(link(i, rssi, 0))
    assert [(a.kind, a.state) for a in out] == [("link_quality", "raised")]
    assert out[0].details["median_rssi"] == -120
    assert out[0].message == "link quality low: median RSSI -120 dBm, SNR 0 dB"
    # Back above the floor but within the hysteresis margin: still raised.
    out = []
    for i, rssi in enumerate([-113, -113, -113], start=20):
        out += p.on_reading(link(i, rssi, 0))
    assert out == []
    for i, rssi in enumerate([-100, -100], start=30):
        out += p.on_reading(link(i, rssi, 0))
    assert [a.state for a in out] == ["cleared"]


def test_link_quality_snr_alone() -> None:
    p, _ = policy(link_window=2, rssi_floor=None, snr_floor=-10)
    out = []
    for i in range(3):
        out += p.on_reading(link(i, None, -18))
    assert [a.state for a in out] == ["raised"]
    assert out[0].details["median_snr"] == -18
    assert out[0].message == "link quality low: median SNR -18 dB"


def gap(p: AlertPolicy, counters: list[int], t0: float = 0.0):
    out = []
    for i, fc in enumerate(counters):
        out += p.on_reading(Reading("g", t0 + i, {"t": 1.0}, f_cnt=fc))
    return out


def test_frame_gap_raise_and_clear() -> None:
    p, _ = policy(fcnt_gap=5, clear_after=2)
    out = gap(p, [1, 2, 3, 4, 5, 5, 20])  # duplicate 5 ignored, 14 lost before 20
    assert [(a.kind, a.state) for a in out] == [("frame_gap", "raised")]
    assert out[0].details["lost_frames"] == 14
    assert gap(p, [21, 30], t0=100) == []  # 8 lost: dedup while raised; breaks the clean run
    out = gap(p, [31, 32], t0=200)
    assert [a.state for a in out] == ["cleared"]


def test_frame_gap_16_and_32_bit_wrap() -> None:
    p, m = policy(fcnt_gap=5)
    assert gap(p, [65533, 65534, 65535, 0, 1, 2]) == []  # 16-bit wrap, nothing lost
    p1, _ = policy(fcnt_gap=5)
    out = gap(p1, [65533, 10])  # 16-bit wrap with 12 lost (65534, 65535, 0..9)
    assert [a.details["lost_frames"] for a in out] == [12]
    p2, _ = policy(fcnt_gap=5)
    assert gap(p2, [2**32 - 2, 2**32 - 1, 0, 1]) == []  # 32-bit wrap
    assert m.get("alert_policy_fcnt_resets_total") == 0


def test_frame_gap_device_reset_rebases() -> None:
    p, m = policy(fcnt_gap=5)
    assert gap(p, [40000, 40001, 0, 1, 2]) == []  # re-join: counter back to 0, no alert
    assert m.get("alert_policy_fcnt_resets_total") == 1
    out = gap(p, [3, 30], t0=10)
    assert [a.details["lost_frames"] for a in out] == [26]


def test_silent_learned_interval_and_clear() -> None:
    p, m = policy(silent_factor=3, silent_min_s=0, silent_learn_intervals=3)
    for i in range(3):
        p.on_reading(Reading("s", 100.0 + 60 * i, {"t": 1.0}))
    assert p.check_silent(500.0) == []  # only 2 intervals learned yet
    p.on_reading(Reading("s", 280.0, {"t": 1.0}))
    assert p.check_silent(280 + 180) == []  # exactly 3x: not yet
    (a,) = p.check_silent(280 + 181)
    assert (a.kind, a.state) == ("device_silent", "raised")
    assert a.details["usual_interval_s"] == 60
    assert p.check_silent(10_000) == []  # dedup while raised
    (c,) = p.on_reading(Reading("s", 10_001, {"t": 1.0}))
    assert (c.kind, c.state) == ("device_silent", "cleared")
    assert c.key == alert_key("s", "device_silent", "cleared", 280.0)
    assert a.key == alert_key("s", "device_silent", "raised", 280.0)
    assert m.get("alerts_raised_total", kind="device_silent") == 1


def test_silent_profile_interval_and_floor() -> None:
    p, _ = policy(silent_factor=2, silent_min_s=300)
    p.set_expected_interval("x", 60)
    p.on_reading(Reading("x", 0.0, {"t": 1.0}))
    assert p.check_silent(250) == []  # 2x60 passed, but the floor is 300 s
    assert [a.kind for a in p.check_silent(301)] == ["device_silent"]


def test_bounded_devices_evicts_least_recently_seen() -> None:
    p, m = policy(max_devices=3, raise_after=1)
    for d in ["a", "b", "c"]:
        p.on_score(d, 0, 0.0)
    p.on_score("a", 1, 0.0)  # a is now most recent
    p.on_score("d", 2, 0.0)
    assert len(p) == 3
    assert p.raised("b") == {}
    assert p.raised("a") == {"anomaly": False}
    assert m.get("alert_policy_evictions_total") == 1


def test_many_windows_fast() -> None:
    p, _ = policy(raise_after=2, clear_after=2)
    import time
    t = time.perf_counter()
    n = 0
    for i in range(20000):
        n += len(p.on_score(f"dev{i % 200}", float(i), 2.0 if (i // 2000) % 2 else 0.1))
    assert time.perf_counter() - t < 2.0
    assert n == 200 * 9  # per device: 5 raises (odd phases) and 4 clears (the last phase ends raised)


@settings(max_examples=150, deadline=None)
@given(scores=st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), max_size=80),
       raise_after=st.integers(1, 4), clear_after=st.integers(1, 4),
       min_interval=st.sampled_from([0.0, 25.0]))
def test_lifecycle_alternates_and_keys_pair(scores: list[float], raise_after: int, clear_after: int,
                                            min_interval: float) -> None:
    p, _ = policy(raise_after=raise_after, clear_after=clear_after, min_interval_s=min_interval)
    alerts = feed(p, scores)
    states = [a.state for a in alerts]
    assert states == ["raised", "cleared"] * (len(states) // 2) + ["raised"] * (len(states) % 2)
    for r, c in zip(alerts[::2], alerts[1::2]):
        assert r.details["episode_start"] == c.details["episode_start"] <= r.timestamp < c.timestamp
        assert r.key != c.key
        assert r.key == alert_key("d1", "anomaly", "raised", r.details["episode_start"])
    assert len({a.key for a in alerts}) == len(alerts)
    assert p.raised("d1").get("anomaly", False) == (len(alerts) % 2 == 1)


@settings(max_examples=150, deadline=None)
@given(start=st.integers(0, 2**32 - 1), steps=st.lists(st.integers(1, 8), min_size=1, max_size=30),
       bits=st.sampled_from([16, 32]))
def test_frame_counter_wrap_never_reports_loss_for_consecutive_frames(start: int, steps: list[int],
                                                                       bits: int) -> None:
    p, m = policy(fcnt_gap=7)
    modulus = 1 << bits
    counter = start % modulus
    counters = [counter]
    for step in steps:
        counter = (counter + step) % modulus
        counters.append(counter)
    # Gaps of at most 7 lost frames (step <= 8) never raise, across any wrap.
    assert gap(p, counters) == []
    assert m.get("alert_policy_fcnt_resets_total") == 0

"""Device profiles (matching, channel mapping) and the decode step the pipeline calls."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.ingest.decoding import decode_uplink, reason_of
from gateway.ingest.profiles import DEFAULT_PROFILE, ProfileConfig, ProfileSet, flatten, to_reading
from gateway.plugin_manager import make_plugin_manager
from gateway.types import DecodeError, RawUplink
from plugins.sources.mqtt.shapes import parse_uplink

PM = make_plugin_manager(load_entry_points=False)


def _up(device_id: str = "0101010101010101", name: str | None = None, f_port: int | None = None,
        payload: bytes = b"", decoded: dict[str, Any] | None = None) -> RawUplink:
    return RawUplink(device_id=device_id, received_at=10.0, payload=payload, f_port=f_port,
                     device_name=name, decoded=decoded, f_cnt=7)


def test_config_refuses_unknown_keys_and_documents_fields() -> None:
    with pytest.raises(ValidationError):
        ProfileConfig(name="x", codecs="json")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ProfileConfig(name="x", match_f_port=300)
    for name, field in ProfileConfig.model_fields.items():
        assert field.description, name
    p = ProfileConfig(name="x", match_dev_eui=["01-01-01-01-01-01-01-0A", " A840414000000001 "], codec="auto")
    assert p.match_dev_eui == ["010101010101010a", "a840414000000001"] and p.codec is None


def test_matching_precedence() -> None:
    by_port = ProfileConfig(name="port2", match_f_port=2, codec="dragino_lse01")
    by_name = ProfileConfig(name="lht", match_name="lht65-*", codec="dragino_lht65")
    by_name_port = ProfileConfig(name="lht-85", match_name="lht65-*", match_f_port=85)
    by_eui = ProfileConfig(name="one", match_dev_eui=["0101010101010101"], codec="json")
    catch_all = ProfileConfig(name="rest", codec="cayenne_lpp")
    ps = ProfileSet([by_port, by_name_port, by_name, by_eui, catch_all])
    assert ps.match(_up(name="lht65-3", f_port=2)) is by_eui          # DevEUI first
    assert ps.match(_up("0202020202020202", "lht65-3", 2)) is by_name  # then name (by_name_port needs port 85)
    assert ps.match(_up("0202020202020202", "lht65-3", 85)) is by_name_port
    assert ps.match(_up("0202020202020202", "other", 2)) is by_port    # then fPort
    assert ps.match(_up("0202020202020202", "other", 3)) is catch_all  # then the catch-all
    assert ProfileSet([]).match(_up()) is DEFAULT_PROFILE
    assert ps.match(_up("0202020202020202", "other", 3)) is catch_all  # cached answer is the same
    assert len(ps) == 5


def test_flatten_and_channel_mapping(formats_dir: Path) -> None:
    up = parse_uplink(None, (formats_dir / "ttn_v3_up.json").read_bytes())
    assert up.decoded is not None
    assert flatten(up.decoded)["Device Status.Sensor Fault"] == "No"
    reading = to_reading(up, up.decoded, DEFAULT_PROFILE)
    assert reading.values == {"Temperature": 21.83}  # strings ignored
    assert reading.device_id == "0025ca00000017c2" and reading.f_cnt == 25 and reading.radio.rssi == -69.0
    mapped = ProfileConfig(name="t", channels={"temperature": "Temperature", "missing": "Nope"})
    assert to_reading(up, up.decoded, mapped).values == {"temperature": 21.83}


def test_default_channels_skip_battery_radio_and_booleans() -> None:
    decoded = {"temperature": 20.0, "battery_v": 3.1, "BatV": 3.0, "rssi": -50, "ok": True,
               "gps": {"lat": 1.5, "lon": 2}, "label": "x", "none": None}
    values = to_reading(_up(), decoded, DEFAULT_PROFILE).values
    assert values == {"temperature": 20.0, "gps.lat": 1.5, "gps.lon": 2.0}
    assert all(isinstance(v, float) for v in values.values())
    with_battery = ProfileConfig(name="b", battery_field="battery_v", battery_low=2.9)
    assert to_reading(_up(), decoded, with_battery).values["battery_v"] == 3.1


def test_non_finite_values_are_rejected() -> None:
    with pytest.raises(DecodeError) as info:
        to_reading(_up(), {"t": float("nan")}, DEFAULT_PROFILE)
    assert info.value.reason == "non_finite"
    with pytest.raises(DecodeError):
        to_reading(_up(), {"t": 10**400}, DEFAULT_PROFILE)


def test_decode_uplink_every_shared_vector(formats_dir: Path) -> None:
    profiles = ProfileSet([
        ProfileConfig(name="em300", match_f_port=85, codec="milesight_em300", battery_field="battery"),
    ])
    up = parse_uplink(None, (formats_dir / "chirpstack_v4_up_em300th.json").read_bytes())
    reading, profile = decode_uplink(PM, up, profiles)
    assert profile.name == "em300"
    assert reading.values == {"temperature": 30.8, "humidity": 50.5, "battery": 92.0}
    assert reading.timestamp == up.received_at and reading.f_cnt == 4

    v3 = json.loads((formats_dir / "chirpstack_v3_up.json").read_text())
    v3["data"] = ""
    reading, _ = decode_uplink(PM, parse_uplink(None, json.dumps(v3).encode()), profiles)
    assert reading.values == {"temperatureSensor": 25.0, "humiditySensor": 32.0}

    with pytest.raises(DecodeError) as info:
        decode_uplink(PM, parse_uplink(None, (formats_dir / "chirpstack_v4_up.json").read_bytes()), profiles)
    assert info.value.reason == "no_decoder"  # one byte 0xAA, no object: kept for quarantine by the caller


def test_decode_uplink_reasons() -> None:
    with pytest.raises(DecodeError) as info:
        decode_uplink(PM, _up(payload=b'{"state": "on"}'), None)
    assert reason_of(info.value) == info.value.reason == "no_channels"
    with pytest.raises(DecodeError) as info:
        decode_uplink(PM, _up(payload=b"\x01\x67\xff"), [ProfileConfig(name="lpp", codec="cayenne_lpp")])
    assert info.value.reason == "lpp_truncated"
    with pytest.raises(DecodeError) as info:
        decode_uplink(PM, _up(payload=b"\x01"), [ProfileConfig(name="x", codec="nope")])
    assert info.value.reason == "unknown_codec"
    reading, profile = decode_uplink(PM, _up(payload=bytes.fromhex("0167FFD7")), [])
    assert reading.values == {"temperature_1": -4.1} and profile is DEFAULT_PROFILE


def test_auto_mode_falls_back_to_the_payload_when_the_object_has_no_numbers(formats_dir: Path) -> None:
    # like the real LSE01 capture in ttn_v3_notes.txt: decoded_payload values are strings with units
    doc = json.loads((formats_dir / "ttn_v3_up.json").read_text())
    doc["uplink_message"]["decoded_payload"] = {"Bat": "3.384 V", "temp_SOIL": "30.11 °C"}
    doc["uplink_message"]["frm_payload"] = "AWf/1w=="  # Cayenne LPP temperature -4.1
    reading, _ = decode_uplink(PM, parse_uplink(None, json.dumps(doc).encode()), None)
    assert reading.values == {"temperature_1": -4.1}
    doc["uplink_message"]["frm_payload"] = "qg=="  # nobody's: the object's failure is reported
    with pytest.raises(DecodeError) as info:
        decode_uplink(PM, parse_uplink(None, json.dumps(doc).encode()), None)
    assert info.value.reason == "no_channels"


def test_decode_uplink_is_fast_enough_for_the_pipeline() -> None:
    profiles = ProfileSet([ProfileConfig(name="lpp", match_f_port=1, codec="cayenne_lpp")])
    uplinks = [_up(f"{i:016x}", f_port=1, payload=bytes.fromhex("0367011005 6700FF".replace(" ", "")))
               for i in range(2000)]
    start = time.perf_counter()
    for up in uplinks:
        decode_uplink(PM, up, profiles)
    per_uplink = (time.perf_counter() - start) / len(uplinks)
    assert per_uplink < 200e-6, f"{per_uplink * 1e6:.0f} us per uplink"  # a shared 2-core box; typically ~10 us


@settings(max_examples=300, deadline=None)
@given(decoded=st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8), max_size=6))
def test_fuzz_to_reading(decoded: dict[str, Any]) -> None:
    try:
        reading = to_reading(_up(), decoded, DEFAULT_PROFILE)
    except DecodeError as exc:
        assert exc.reason == "non_finite"
        return
    assert all(isinstance(v, float) for v in reading.values.values())

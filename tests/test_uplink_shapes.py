"""Uplink shapes: the shared ChirpStack v3/v4 and TTS v3 messages, the plain json shape, errors, fuzz."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.sources.mqtt.shapes import UplinkShapeError, parse_time, parse_uplink, topic_matches

V4_TOPIC = "application/17c82e96-be03-4f38-aef3-f83d48582d97/device/0101010101010101/event/up"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _reason(topic: str | None, body: bytes, shape: str = "auto") -> str:
    with pytest.raises(UplinkShapeError) as info:
        parse_uplink(topic, body, shape)
    return info.value.reason


def test_chirpstack_v4_docs_example(formats_dir: Path) -> None:
    body = (formats_dir / "chirpstack_v4_up.json").read_bytes()
    up = parse_uplink(V4_TOPIC, body)
    assert up.shape == "chirpstack_v4"
    assert up.device_id == "0101010101010101" and up.device_name == "Test device"
    assert up.payload == b"\xaa" and up.f_port == 1
    assert up.f_cnt is None  # the example has no fCnt
    # "2022-07-18T09:34:15.775023242+00:00": nanosecond fraction
    assert up.received_at == pytest.approx(_ts("2022-07-18T09:34:15") + 0.775023242, abs=1e-6)
    r = up.radio
    assert (r.rssi, r.snr, r.gateway_id) == (-36.0, 10.5, "0016c001f153a14c")
    assert (r.frequency_hz, r.spreading_factor, r.bandwidth_hz) == (867100000, 11, 125000)
    assert up.decoded is None
    assert parse_uplink(V4_TOPIC, body, "chirpstack_v4") == up


def test_chirpstack_v4_em300_capture(formats_dir: Path) -> None:
    up = parse_uplink(None, (formats_dir / "chirpstack_v4_up_em300th.json").read_bytes())
    assert up.device_id == "1000000000000001" and up.f_cnt == 4 and up.f_port == 85
    assert up.payload.hex() == "01755c03673401046865"
    assert (up.radio.rssi, up.radio.snr, up.radio.spreading_factor) == (-35.0, 11.5, 7)
    assert up.received_at == pytest.approx(_ts("2023-05-22T07:47:05.404859"))


def test_chirpstack_v4_object_and_strongest_gateway(formats_dir: Path) -> None:
    doc = json.loads((formats_dir / "chirpstack_v4_up.json").read_text())
    doc["object"] = {"temperature": 21.5}
    doc["rxInfo"].append({"gatewayId": "AABBCCDDEEFF0011", "rssi": -20, "snr": 3})
    doc["deviceInfo"]["devEui"] = "0A0B0C0D0E0F1011"
    up = parse_uplink(None, json.dumps(doc).encode())
    assert up.decoded == {"temperature": 21.5}
    assert up.radio.gateway_id == "aabbccddeeff0011" and up.radio.rssi == -20.0
    assert up.device_id == "0a0b0c0d0e0f1011"
    del doc["time"]
    up = parse_uplink(None, json.dumps(doc).encode(), received_at=123.0)
    assert up.received_at == 123.0


def test_chirpstack_v3_docs_example(formats_dir: Path) -> None:
    body = (formats_dir / "chirpstack_v3_up.json").read_bytes()
    # the published example's "data" is the placeholder "...", not base64: refused, not guessed
    assert _reason("application/123/device/0202020202020202/event/up", body) == "bad_base64"
    doc = json.loads(body)
    doc["data"] = "AQ=="
    up = parse_uplink("application/123/device/0202020202020202/event/up", json.dumps(doc).encode())
    assert up.shape == "chirpstack_v3"
    assert up.device_id == "0202020202020202"  # devEUI was base64 "AgICAgICAgI="
    assert up.device_name == "garden-sensor" and up.f_cnt == 10 and up.f_port == 5
    assert up.radio.gateway_id == "0303030303030303"  # base64 "AwMDAwMDAwM="
    assert (up.radio.rssi, up.radio.snr) == (-48.0, 9.0)  # loRaSNR
    assert up.radio.bandwidth_hz == 125000  # 125 kHz in v3
    assert (up.radio.spreading_factor, up.radio.frequency_hz) == (11, 868100000)
    assert up.decoded == {"temperatureSensor": 25, "humiditySensor": 32}  # objectJSON is a string
    assert up.received_at == pytest.approx(_ts("2019-11-08T13:59:25.048445"))  # rxInfo time


def test_chirpstack_legacy_fragment_fields(formats_dir: Path) -> None:
    # the v2-style fragment in the notes: hex devEUI, rxInfo.mac, dataRate.spreadFactor
    doc = {"devEUI": "0004a30b00e94935", "rxInfo": [{"mac": "7276ff000b031df7", "rssi": -103, "loRaSNR": 5.8,
           "time": "2024-07-08T21:15:43.444511Z"}], "txInfo": {"frequency": 916400000,
           "dataRate": {"modulation": "LORA", "bandwidth": 125, "spreadFactor": 7}}, "fCnt": 249, "fPort": 100,
           "data": "CwAdVQ0P/A0P/wEAqQIDmAwM6A=="}
    up = parse_uplink(None, json.dumps(doc).encode(), "chirpstack_v3")
    assert up.device_id == "0004a30b00e94935" and up.radio.gateway_id == "7276ff000b031df7"
    assert (up.radio.spreading_factor, up.radio.bandwidth_hz, up.radio.snr) == (7, 125000, 5.8)
    assert up.payload[:2] == b"\x0b\x00"


def test_tts_v3_real_uplink(formats_dir: Path) -> None:
    up = parse_uplink("v3/thingsboard-ttn-demo@ttn/devices/rs261-erik-internal/up",
                      (formats_dir / "ttn_v3_up.json").read_bytes())
    assert up.shape == "tts_v3"
    assert up.device_id == "0025ca00000017c2"  # upper-case dev_eui normalised
    assert up.device_name == "rs261-erik-internal"
    assert up.payload == bytes.fromhex("00c40015d4") and up.f_port == 1 and up.f_cnt == 25
    assert up.decoded is not None and up.decoded["Temperature"] == 21.83
    assert (up.radio.rssi, up.radio.snr, up.radio.gateway_id) == (-69.0, 8.25, "eriks-rg186")
    assert up.radio.frequency_hz == 868100000  # a string in the message
    assert (up.radio.spreading_factor, up.radio.bandwidth_hz) == (7, 125000)
    assert up.received_at == pytest.approx(_ts("2025-11-07T08:52:14") + 0.536109379, abs=1e-6)


def test_tts_v3_docs_uplink_without_f_cnt(formats_dir: Path) -> None:
    up = parse_uplink("v3/app1@tenant1/devices/dev1/up", (formats_dir / "ttn_v3_up_mqtt_docs.json").read_bytes())
    assert up.device_id == "4200000000000000" and up.f_port == 15
    assert up.f_cnt == 0  # TTS omits zero-valued fields
    assert up.received_at == pytest.approx(_ts("2019-01-29T13:02:34.981"))  # only the gateway time exists
    assert up.radio.snr == 5.0 and up.radio.frequency_hz == 868500000


def test_tts_device_without_dev_eui_uses_device_id(formats_dir: Path) -> None:
    doc = json.loads((formats_dir / "ttn_v3_up.json").read_text())
    del doc["end_device_ids"]["dev_eui"]
    assert parse_uplink(None, json.dumps(doc).encode()).device_id == "rs261-erik-internal"


def test_plain_json_shape() -> None:
    up = parse_uplink("sensors/x", b'{"device_id": "A840414000000001", "values": {"temperature": 21.5},'
                                    b' "time": "2024-01-01T00:00:00Z", "rssi": -80, "f_cnt": 3}')
    assert up.shape == "json" and up.device_id == "a840414000000001"
    assert up.decoded == {"temperature": 21.5} and up.payload == b""
    assert up.received_at == _ts("2024-01-01T00:00:00") and up.radio.rssi == -80.0 and up.f_cnt == 3
    up = parse_uplink(None, b'{"device_id": "pump-7", "payload_hex": "0167FFD7", "f_port": 2, "time": 1700000000}')
    assert (up.device_id, up.payload, up.f_port, up.received_at) == ("pump-7", bytes.fromhex("0167FFD7"), 2, 1.7e9)
    up = parse_uplink(None, b'{"device_id": 42, "payload_b64": "AWf/1w=="}', "json", received_at=5.0)
    assert (up.device_id, up.payload, up.received_at) == ("42", bytes.fromhex("0167FFD7"), 5.0)


@pytest.mark.parametrize(("topic", "body", "shape", "reason"), [
    (None, b"{", "auto", "malformed_json"),
    (None, b"\xff\xfe\x00", "auto", "malformed_json"),
    (None, b'{"a": NaN}', "auto", "malformed_json"),
    (None, b'{"a": 1e999}', "auto", "malformed_json"),
    (None, b"[" * 100000, "auto", "malformed_json"),
    (None, b"[]", "auto", "not_object"),
    (None, b'{"hello": 1}', "auto", "unknown_shape"),
    (None, b"{}", "nonsense", "unknown_shape"),
    (None, b" " * (300 * 1024), "auto", "too_large"),
    ("application/1/device/0101010101010101/event/join", b"{}", "auto", "not_uplink"),
    ("v3/app@ttn/devices/dev/down/ack", b"{}", "auto", "not_uplink"),
    (None, b'{"deviceInfo": {}}', "auto", "missing_device_id"),
    (None, b'{"deviceInfo": {"devEui": "xyz"}}', "auto", "bad_device_id"),
    (None, b'{"deviceInfo": {"devEui": "0101010101010101"}, "data": "%%"}', "auto", "bad_base64"),
    (None, b'{"deviceInfo": {"devEui": "0101010101010101"}, "fPort": 300}', "auto", "bad_field"),
    (None, b'{"deviceInfo": {"devEui": "0101010101010101"}, "rxInfo": {}}', "auto", "bad_field"),
    (None, b'{"deviceInfo": {"devEui": "0101010101010101"}, "object": [1]}', "auto", "bad_object"),
    (None, b'{"devEUI": "AgICAgICAgI=", "objectJSON": "{bad"}', "auto", "bad_object"),
    (None, b'{"devEUI": "AgI="}', "auto", "bad_device_id"),
    (None, b'{"end_device_ids": {}, "uplink_message": {}}', "auto", "missing_device_id"),
    (None, b'{"device_id": ""}', "auto", "missing_device_id"),
    (None, b'{"device_id": "x"}', "auto", "bad_field"),
    (None, b'{"device_id": "x", "payload_hex": "abc"}', "auto", "bad_hex"),
    (None, b'{"device_id": "x", "values": 3}', "auto", "bad_object"),
    (None, b'{"device_id": "x", "values": {}, "rssi": true}', "auto", "bad_field"),
])
def test_bad_input_reasons(topic: str | None, body: bytes, shape: str, reason: str) -> None:
    assert _reason(topic, body, shape) == reason


def test_times() -> None:
    assert parse_time("2022-07-18T09:34:15.775023242+00:00") == pytest.approx(1658136855.775023242, abs=1e-6)
    assert parse_time("2022-07-18T11:34:15+02:00") == parse_time("2022-07-18T09:34:15Z")
    assert parse_time("2022-07-18T09:34:15") == parse_time("2022-07-18T09:34:15Z")
    for bad in ("yesterday", "2022-13-01T00:00:00Z", None, True, float("nan"), -1, {}, "2022-07-18"):
        assert parse_time(bad) is None


def test_topic_matches() -> None:
    assert topic_matches("application/+/device/+/event/up", V4_TOPIC)
    assert not topic_matches("application/+/device/+/event/up", V4_TOPIC + "/x")
    assert topic_matches("v3/#", "v3/a@t/devices/d/up")
    assert not topic_matches("v3/+/devices/+/up", "v3/a/devices/d/join")


# -- fuzz: nothing but UplinkShapeError escapes -----------------------------------------

_VECTOR_FILES = ("chirpstack_v4_up.json", "chirpstack_v4_up_em300th.json", "chirpstack_v3_up.json",
                 "ttn_v3_up.json", "ttn_v3_up_mqtt_docs.json")
_REPO_FORMATS = Path(__file__).resolve().parent.parent.parent / "shared" / "formats"

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _must_be_shape_error(topic: str | None, body: bytes, shape: str = "auto") -> None:
    try:
        up = parse_uplink(topic, body, shape)
    except UplinkShapeError as exc:
        assert exc.reason and " " not in exc.reason
        return
    assert isinstance(up.device_id, str) and up.device_id
    assert isinstance(up.payload, bytes) and isinstance(up.received_at, float)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), topic=st.one_of(st.none(), st.text(max_size=40)),
       shape=st.sampled_from(["auto", "chirpstack_v4", "chirpstack_v3", "tts_v3", "json"]))
def test_fuzz_random_bytes(body: bytes, topic: str | None, shape: str) -> None:
    _must_be_shape_error(topic, body, shape)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_real_vectors(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(_VECTOR_FILES))
    doc = json.loads((_REPO_FORMATS / name).read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(_json_values)
        else:
            del parent[path[-1]]
    body = json.dumps(doc).encode()
    shape = data.draw(st.sampled_from(["auto", "chirpstack_v4", "chirpstack_v3", "tts_v3", "json"]))
    _must_be_shape_error(None, body, shape)
    # and the same body cut short or with a byte flipped
    cut = data.draw(st.integers(0, len(body)))
    _must_be_shape_error(None, body[:cut])
    i = data.draw(st.integers(0, len(body) - 1))
    _must_be_shape_error(None, body[:i] + bytes([body[i] ^ 0x20]) + body[i + 1:])

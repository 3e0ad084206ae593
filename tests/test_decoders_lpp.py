"""Cayenne LPP decoder: every vector in lpp_vectors.txt, the whole type table, errors, fuzz."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.types import DecodeError, RawUplink
from plugins.decoders import cayenne_lpp
from plugins.decoders.cayenne_lpp import LPP_TYPES, decode_lpp

_HEX_LINE = re.compile(r"(?:[0-9A-Fa-f]{2}\s+)*[0-9A-Fa-f]{2}")
# names in the ElectronicCats decoder.js output -> this decoder's names
_P2_NAMES = {"digital_in": "digital_input", "temperature": "temperature", "humidity": "humidity",
             "barometer": "barometer", "illuminance": "illuminance",
             "accelerometer": "accelerometer", "gps": "gps"}


def lpp_vectors(formats_dir: Path) -> list[tuple[bytes, dict[str, float]]]:
    """(payload, expected fields) for each hex line, from the [P2] decoder output after it."""
    out: list[tuple[bytes, dict[str, float]]] = []
    payload: bytes | None = None
    for line in (formats_dir / "lpp_vectors.txt").read_text().splitlines():
        if _HEX_LINE.fullmatch(line.strip()):
            payload = bytes.fromhex(line)
            continue
        m = re.search(r"\[P2\].*?(\[\{.*\}\])\s*$", line)
        if m and payload is not None:
            expected: dict[str, float] = {}
            for item in json.loads(m.group(1)):
                base = f"{_P2_NAMES[item['name']]}_{item['channel']}"
                if isinstance(item["value"], dict):
                    for part, value in item["value"].items():
                        expected[f"{base}.{part}"] = float(value)
                else:
                    expected[base] = float(item["value"])
            out.append((payload, expected))
            payload = None
    return out


def test_every_vector_in_the_file_decodes_to_the_published_values(formats_dir: Path) -> None:
    vectors = lpp_vectors(formats_dir)
    assert len(vectors) == 6
    for payload, expected in vectors:
        got = decode_lpp(payload)
        assert got.keys() == expected.keys(), payload.hex()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (payload.hex(), key)
            assert isinstance(got[key], float)


def test_spec_examples_exact(formats_dir: Path) -> None:
    assert decode_lpp(bytes.fromhex("0367011005 6700FF".replace(" ", ""))) == {
        "temperature_3": 27.2, "temperature_5": 25.5}
    assert decode_lpp(bytes.fromhex("0167FFD7")) == {"temperature_1": -4.1}
    gps = decode_lpp(bytes.fromhex("018806765ff2960a0003e8"))
    assert gps == {"gps_1.latitude": 42.3519, "gps_1.longitude": -87.9094, "gps_1.altitude": 10.0}


def test_azure_starterkit_vector_agrees_with_spec() -> None:
    # [P4]: temperature 23.0, humidity 24.0 (1 byte, 0.5 % steps as in the spec), barometer 976.8, lux 253
    got = decode_lpp(bytes.fromhex("016700e6026830037326280465 00fd".replace(" ", "")))
    assert got == {"temperature_1": 23.0, "humidity_2": 24.0, "barometer_3": 976.8, "illuminance_4": 253.0}


# one payload per type in the table: (type id, value bytes, expected fields)
_TABLE = [
    (0, "05", {"digital_input_7": 5.0}),
    (1, "01", {"digital_output_7": 1.0}),
    (2, "FF9C", {"analog_input_7": -1.0}),
    (3, "0190", {"analog_output_7": 4.0}),
    (100, "00010000", {"generic_sensor_7": 65536.0}),
    (101, "FFFF", {"illuminance_7": 65535.0}),
    (102, "01", {"presence_7": 1.0}),
    (103, "FF38", {"temperature_7": -20.0}),
    (104, "C8", {"humidity_7": 100.0}),
    (113, "03E8FC180000", {"accelerometer_7.x": 1.0, "accelerometer_7.y": -1.0, "accelerometer_7.z": 0.0}),
    (115, "27AC", {"barometer_7": 1015.6}),
    (116, "FFFF", {"voltage_7": 655.35}),  # unsigned, see test below
    (117, "8000", {"current_7": 32.768}),
    (118, "000003E8", {"frequency_7": 1000.0}),
    (120, "64", {"percentage_7": 100.0}),
    (121, "FFF6", {"altitude_7": -10.0}),
    (125, "0190", {"concentration_7": 400.0}),
    (128, "0064", {"power_7": 100.0}),
    (130, "000007D0", {"distance_7": 2.0}),
    (131, "00002710", {"energy_7": 10.0}),
    (132, "0168", {"direction_7": 360.0}),
    (133, "5F5E1000", {"unix_time_7": 1600000000.0}),
    (134, "0064FF9C0000", {"gyrometer_7.x": 1.0, "gyrometer_7.y": -1.0, "gyrometer_7.z": 0.0}),
    (135, "FF8000", {"colour_7.r": 255.0, "colour_7.g": 128.0, "colour_7.b": 0.0}),
    (136, "FFFFFF000001FFFF9C", {"gps_7.latitude": -0.0001, "gps_7.longitude": 0.0001, "gps_7.altitude": -1.0}),
    (142, "01", {"switch_7": 1.0}),
]


def test_table_covers_every_type_in_the_file(formats_dir: Path) -> None:
    text = (formats_dir / "lpp_vectors.txt").read_text()
    ids = {int(m.group(1)) for m in re.finditer(r"^#\s+[A-Za-z][A-Za-z *]+?\s+\d{4}\s+(\d+)\s", text, re.M)}
    assert ids == set(LPP_TYPES) == {t for t, _, _ in _TABLE}
    sizes = {int(m.group(1)): int(m.group(2)) for m in
             re.finditer(r"^#\s+[A-Za-z][A-Za-z *]+?\s+\d{4}\s+(\d+)\s+[0-9A-F]{2}\s+(\d+)", text, re.M)}
    assert sizes == {t: spec[1] for t, spec in LPP_TYPES.items()}


@pytest.mark.parametrize(("type_id", "value_hex", "expected"), _TABLE)
def test_each_type(type_id: int, value_hex: str, expected: dict[str, float]) -> None:
    got = decode_lpp(bytes([7, type_id]) + bytes.fromhex(value_hex))
    assert got == pytest.approx(expected)


def test_voltage_and_current_are_unsigned_as_the_header_says() -> None:
    # ElectronicCats getTypeSigned() says signed; its header and decoder.js say unsigned: we follow the latter.
    assert decode_lpp(bytes.fromhex("0174FFFF")) == {"voltage_1": 655.35}
    assert decode_lpp(bytes.fromhex("0175FFFF")) == {"current_1": 65.535}


def test_humidity_is_one_byte_half_percent_not_two_bytes() -> None:
    # third-party decoders that read 2 bytes / 0.1 % contradict the spec; 2 bytes here would leave a truncated frame
    assert decode_lpp(bytes.fromhex("016851")) == {"humidity_1": 40.5}
    with pytest.raises(DecodeError, match="lpp_"):
        decode_lpp(bytes.fromhex("01680195"))


@pytest.mark.parametrize(("payload", "reason"), [
    ("", "lpp_empty"),
    ("01", "lpp_truncated"),
    ("0167FF", "lpp_truncated"),
    ("03670110056700", "lpp_truncated"),
    ("01F0000000", "lpp_unknown_type"),   # polyline: not supported
    ("0199", "lpp_unknown_type"),
    ("0167000101670002", "lpp_duplicate_field"),
])
def test_errors(payload: str, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_lpp(bytes.fromhex(payload))
    assert info.value.reason == reason


def test_hook_auto_mode_claims_only_whole_frames() -> None:
    up = RawUplink(device_id="d", received_at=0.0, payload=bytes.fromhex("0167FFD7"))
    assert cayenne_lpp.lora_gateway_decode(up, None) == {"temperature_1": -4.1}
    bad = RawUplink(device_id="d", received_at=0.0, payload=bytes.fromhex("0167FF"))
    assert cayenne_lpp.lora_gateway_decode(bad, None) is None
    assert cayenne_lpp.lora_gateway_decode(up, "json") is None
    with pytest.raises(DecodeError):
        cayenne_lpp.lora_gateway_decode(bad, "cayenne_lpp")
    assert cayenne_lpp.lora_gateway_codecs() == ["cayenne_lpp"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_only_decode_errors(data: bytes) -> None:
    try:
        out = decode_lpp(data)
    except DecodeError:
        return
    assert out and all(isinstance(v, float) for v in out.values())
    up = RawUplink(device_id="d", received_at=0.0, payload=data)
    assert cayenne_lpp.lora_gateway_decode(up, None) == out

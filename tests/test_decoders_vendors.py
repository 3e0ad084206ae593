"""Vendor layouts: Dragino LHT65, Dragino LSE01, Milesight EM300-TH, against the shared vectors."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.types import DecodeError, RawUplink
from plugins.decoders import dragino_lht65, dragino_lse01, milesight_em300
from plugins.decoders.dragino_lht65 import decode_lht65
from plugins.decoders.dragino_lse01 import decode_lse01
from plugins.decoders.milesight_em300 import decode_em300_th

_HEX_LINE = re.compile(r"(?:[0-9A-Fa-f]{2}\s+)*[0-9A-Fa-f]{2}")


def hex_vectors(path: Path) -> list[tuple[bytes, list[str]]]:
    """Each hex line of a vector file with the comment lines that follow it."""
    out: list[tuple[bytes, list[str]]] = []
    for line in path.read_text().splitlines():
        if _HEX_LINE.fullmatch(line.strip()):
            out.append((bytes.fromhex(line), []))
        elif out:
            out[-1][1].append(line)
    return out


def _uplink(payload: bytes, f_port: int | None = 2) -> RawUplink:
    return RawUplink(device_id="a84041000000000a", received_at=0.0, payload=payload, f_port=f_port)


# -- LHT65 -------------------------------------------------------------------------------

_LHT65_NAMES = {"BatV": "battery_v", "Bat_status": "battery_status", "Hum_SHT": "humidity",
                "TempC_DS": "external_temperature", "TempC_SHT": "temperature"}


def test_lht65_vector_matches_the_ttn_codec_output(formats_dir: Path) -> None:
    vectors = hex_vectors(formats_dir / "lht65.txt")
    assert len(vectors) == 1
    payload, notes = vectors[0]
    text = next(n for n in notes if "output data:" in n)
    expected = ast.literal_eval(text[text.index("{"):text.rindex("}") + 1])
    got = decode_lht65(payload, 2)
    for src, ours in _LHT65_NAMES.items():
        assert got[ours] == pytest.approx(float(expected[src])), src
    assert expected["Ext_sensor"] == "Temperature Sensor" and got["external_sensor"] == 1.0
    assert got["external_connected"] is True
    # "same bytes on fPort 42 -> errors"
    with pytest.raises(DecodeError, match="unsupported_f_port"):
        decode_lht65(payload, 42)


def test_lht65_external_sensor_types_and_errors() -> None:
    base = bytes.fromhex("CBF60B0D0376")
    assert "external_temperature" not in decode_lht65(base + bytes.fromhex("007FFF7FFF"))
    assert "external_temperature" not in decode_lht65(base + bytes.fromhex("017FFF7FFF"))  # no probe
    assert decode_lht65(base + bytes.fromhex("01FF387FFF"))["external_temperature"] == -2.0
    unplugged = decode_lht65(base + bytes.fromhex("810ADD7FFF"))
    assert unplugged["external_connected"] is False and "external_temperature" not in unplugged
    assert decode_lht65(base + bytes.fromhex("0501F40000"))["illuminance"] == 500.0
    assert decode_lht65(base + bytes.fromhex("060BB80000"))["adc_v"] == 3.0
    assert decode_lht65(base + bytes.fromhex("0700100000"))["count"] == 16.0
    assert decode_lht65(base + bytes.fromhex("0800010000"))["count"] == 65536.0
    irq = decode_lht65(base + bytes.fromhex("0401010000"))
    assert irq["interrupt_level"] == 1.0 and irq["interrupt_triggered"] is True
    # negative built-in temperature (two's complement /100)
    assert decode_lht65(bytes.fromhex("CBF6FF380376007FFF7FFF"))["temperature"] == -2.0
    for payload, reason in [(base, "bad_length"), (base + bytes.fromhex("417FFF7FFF"), "poll_message"),
                            (base + bytes.fromhex("097FFF7FFF"), "unsupported_external_sensor")]:
        with pytest.raises(DecodeError) as info:
            decode_lht65(payload)
        assert info.value.reason == reason


# -- LSE01 -------------------------------------------------------------------------------


def test_lse01_vector1_follows_draginos_decoder_raw_mode(formats_dir: Path) -> None:
    payload, notes = hex_vectors(formats_dir / "lse01.txt")[0]
    assert payload[10] == 0x90
    got = decode_lse01(payload, 2)
    # The TTN-repo decoder ignores byte 10 and prints water 19.57 / temp 24.59 / EC 28200; Dragino's
    # own V1.2.1 decoder (the vendor) reads bit 7 as raw mode. We follow the vendor:
    assert got["mode"] == "raw"
    assert got["soil_dielectric_constant"] == pytest.approx(195.7)
    assert got["soil_moisture_raw"] == 2459.0
    assert got["soil_conductivity_raw"] == 28200.0
    assert "soil_moisture" not in got and "soil_temperature" not in got
    # battery and the probe agree across decoders
    ttn = dict(re.findall(r"'(\w+)':\s*\"?([-\d.]+)", next(n for n in notes if "output data" in n)))
    assert got["battery_v"] == float(ttn["Bat"]) == 3.625
    assert got["external_temperature"] == float(ttn["TempC_DS18B20"]) == 24.1
    assert got["soil_conductivity_raw"] == float(ttn["conduct_SOIL"])


def test_lse01_real_ttn_captures(formats_dir: Path) -> None:
    names = {"Bat": "battery_v", "TempC_DS18B20": "external_temperature", "conduct_SOIL": "soil_conductivity",
             "temp_SOIL": "soil_temperature", "water_SOIL": "soil_moisture"}
    captures = hex_vectors(formats_dir / "lse01.txt")[1:]
    assert len(captures) == 2
    for payload, notes in captures:
        line = next(n for n in notes if "decoded_payload:" in n)
        expected = {names[k]: float(v) for k, v in re.findall(r'(\w+): "([-\d.]+)', line)}
        assert len(expected) == 5
        got = decode_lse01(payload, 2)
        assert got["mode"] == "normal" and got["soil_sensor_detected"] is True and got["interrupt"] is False
        for key, value in expected.items():
            assert got[key] == pytest.approx(value), key


def test_lse01_negative_soil_temperature_is_twos_complement() -> None:
    # Dragino's scripts compute (v - 0xFFFF)/100 = -0.99 for 0xFF9C; the layout says int16: -1.00
    payload = bytes.fromhex("0D380000" + "0000" + "FF9C" + "0000" + "10")
    assert decode_lse01(payload)["soil_temperature"] == -1.0


def test_lse01_errors() -> None:
    with pytest.raises(DecodeError, match="bad_length"):
        decode_lse01(b"\x00" * 10)
    with pytest.raises(DecodeError, match="unsupported_f_port"):
        decode_lse01(b"\x00" * 11, 3)


# -- EM300-TH ----------------------------------------------------------------------------


def test_em300_vectors(formats_dir: Path) -> None:
    vectors = hex_vectors(formats_dir / "milesight_em300_th.txt")
    assert len(vectors) == 2
    (p1, n1), (p2, n2) = vectors
    line = next(n for n in n1 if "output data:" in n)
    expected1 = {k: float(v) for k, v in re.findall(r"(battery|temperature|humidity):\s*([-\d.]+)", line)}
    assert decode_em300_th(p1) == expected1 == {"battery": 50.0, "temperature": 20.0, "humidity": 30.0}
    line = next(n for n in n2 if "result.json" in n)
    expected2 = {k: float(v) for k, v in json.loads(line[line.index("{"):]).items()}
    assert decode_em300_th(p2) == expected2


def test_em300_is_little_endian_not_lpp() -> None:
    # the same bytes read as Cayenne LPP fail (type 0x34 after a 2-byte "current"), so auto mode never misreads them
    from plugins.decoders.cayenne_lpp import decode_lpp
    with pytest.raises(DecodeError):
        decode_lpp(bytes.fromhex("01755C03673401046865"))
    assert decode_em300_th(bytes.fromhex("0367F6FF"))["temperature"] == -1.0


def test_em300_unknown_records_stop_decoding_like_the_vendor_decoder() -> None:
    # device info record (0xFF 0x0B) after the readings: decoding stops there, readings kept
    assert decode_em300_th(bytes.fromhex("03671400FF0BFF")) == {"temperature": 2.0}
    # a history record is skipped, later records still decoded
    assert decode_em300_th(bytes.fromhex("20CE" + "00" * 8 + "046864")) == {"humidity": 50.0}
    for payload, reason in [("FF0BFF", "no_known_records"), ("", "no_known_records"), ("0367F6", "truncated")]:
        with pytest.raises(DecodeError) as info:
            decode_em300_th(bytes.fromhex(payload))
        assert info.value.reason == reason


# -- hooks and fuzz ----------------------------------------------------------------------

_PLUGINS = [(dragino_lht65, "dragino_lht65"), (dragino_lse01, "dragino_lse01"), (milesight_em300, "milesight_em300")]


@pytest.mark.parametrize(("module", "codec"), _PLUGINS)
def test_vendor_hooks_only_answer_to_their_codec(module: object, codec: str) -> None:
    payload = bytes.fromhex("CBF60B0D0376010ADD7FFF")
    assert module.lora_gateway_codecs() == [codec]  # type: ignore[attr-defined]
    assert module.lora_gateway_decode(_uplink(payload), None) is None  # type: ignore[attr-defined]
    assert module.lora_gateway_decode(_uplink(payload), "cayenne_lpp") is None  # type: ignore[attr-defined]
    try:
        out = module.lora_gateway_decode(_uplink(payload), codec)  # type: ignore[attr-defined]
    except DecodeError:
        return
    assert isinstance(out, dict) and out


@pytest.mark.parametrize(("module", "codec"), _PLUGINS)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40), f_port=st.one_of(st.none(), st.integers(0, 255)))
def test_fuzz_vendor_decoders(module: object, codec: str, data: bytes, f_port: int | None) -> None:
    try:
        out = module.lora_gateway_decode(_uplink(data, f_port), codec)  # type: ignore[attr-defined]
    except DecodeError:
        return
    assert isinstance(out, dict)
    for value in out.values():
        assert isinstance(value, (float, bool, str))

"""JSON-payload and network-server decoders, plugin registration and the auto-mode order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hookspecs import hookimpl
from gateway.ingest.decoding import available_codecs, decode_fields
from gateway.plugin_manager import make_plugin_manager
from gateway.types import DecodeError, RawUplink
from plugins.decoders import json_payload, network_server
from plugins.decoders.json_payload import decode_json
from plugins.sources.mqtt.shapes import parse_uplink


@pytest.fixture(scope="module")
def pm() -> Any:
    return make_plugin_manager(load_entry_points=False)


def _up(payload: bytes = b"", decoded: dict[str, Any] | None = None) -> RawUplink:
    return RawUplink(device_id="0101010101010101", received_at=1.0, payload=payload, decoded=decoded)


def test_decode_json_objects_and_errors() -> None:
    assert decode_json(b' {"temperature": 21.5, "probe": {"depth": 3}} ') == {
        "temperature": 21.5, "probe": {"depth": 3}}
    for data, reason in [(b"[1, 2]", "not_object"), (b"{", "not_json"), (b"\xff{}", "not_json"),
                         (b'{"t": NaN}', "non_finite"), (b'{"t": -Infinity}', "non_finite"),
                         (b'{"t": 1e999}', "non_finite"), (b"[" * 50000, "not_json"), (b" " * 70000, "too_large")]:
        with pytest.raises(DecodeError) as info:
            decode_json(data)
        assert info.value.reason == reason, data[:20]


def test_json_hook_auto_mode_only_claims_valid_objects() -> None:
    assert json_payload.lora_gateway_decode(_up(b'{"t": 1}'), None) == {"t": 1}
    assert json_payload.lora_gateway_decode(_up(b'{"t": NaN}'), None) is None
    assert json_payload.lora_gateway_decode(_up(b"\x03\x67\x01\x10"), None) is None
    assert json_payload.lora_gateway_decode(_up(b'{"t": 1}'), "cayenne_lpp") is None
    with pytest.raises(DecodeError):
        json_payload.lora_gateway_decode(_up(b"Temperature = 0.0"), "json")


def test_network_server_hook() -> None:
    assert network_server.lora_gateway_decode(_up(decoded={"a": 1.0}), None) == {"a": 1.0}
    assert network_server.lora_gateway_decode(_up(decoded={}), None) is None
    assert network_server.lora_gateway_decode(_up(), None) is None
    assert network_server.lora_gateway_decode(_up(decoded={"a": 1}), "json") is None
    with pytest.raises(DecodeError, match="no_network_server_object"):
        network_server.lora_gateway_decode(_up(), "network_server")


def test_all_six_decoders_are_registered(pm: Any) -> None:
    assert available_codecs(pm) == ["cayenne_lpp", "dragino_lht65", "dragino_lse01", "json",
                                    "milesight_em300", "network_server"]


def test_auto_order_network_server_then_json_then_lpp(pm: Any) -> None:
    lpp = bytes.fromhex("0167FFD7")
    assert decode_fields(pm, _up(lpp, {"x": 2.0})) == ("network_server", {"x": 2.0})
    assert decode_fields(pm, _up(b'{"x": 3}')) == ("json", {"x": 3})
    assert decode_fields(pm, _up(lpp)) == ("cayenne_lpp", {"temperature_1": -4.1})
    # vendor layouts are never guessed: EM300 bytes in auto mode are nobody's
    with pytest.raises(DecodeError) as info:
        decode_fields(pm, _up(bytes.fromhex("01755C03673401046865")))
    assert info.value.reason == "no_decoder"
    assert decode_fields(pm, _up(bytes.fromhex("01755C03673401046865")), "milesight_em300")[0] == "milesight_em300"


def test_same_order_through_the_plain_pluggy_hook(pm: Any) -> None:
    lpp = bytes.fromhex("0167FFD7")
    assert pm.hook.lora_gateway_decode(uplink=_up(lpp, {"x": 2.0}), codec=None) == {"x": 2.0}
    assert pm.hook.lora_gateway_decode(uplink=_up(b'{"x": 3}'), codec=None) == {"x": 3}
    assert pm.hook.lora_gateway_decode(uplink=_up(lpp), codec=None) == {"temperature_1": -4.1}


def test_ttn_docs_text_payload_is_nobodys(pm: Any, formats_dir: Path) -> None:
    up = parse_uplink(None, (formats_dir / "ttn_v3_up_mqtt_docs.json").read_bytes())
    assert up.payload == b"Temperature = 0.0"
    with pytest.raises(DecodeError, match="no_decoder"):
        decode_fields(pm, up)


def test_unknown_codec_and_third_party_plugin(pm: Any) -> None:
    with pytest.raises(DecodeError) as info:
        decode_fields(pm, _up(b"\x01"), "no_such_codec")
    assert info.value.reason == "unknown_codec"

    class Reverse:
        @hookimpl
        def lora_gateway_decode(self, uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
            return {"first_byte": float(uplink.payload[0])} if codec == "reverse" else None

        @hookimpl
        def lora_gateway_codecs(self) -> list[str]:
            return ["reverse"]

    local = make_plugin_manager(load_entry_points=False)
    assert decode_fields(local, _up(b'{"a": 1}'), "json")[0] == "json"  # dispatch table built before the plugin
    plugin = Reverse()
    local.register(plugin, name="reverse")
    try:
        assert decode_fields(local, _up(b"\x07"), "reverse") == ("reverse", {"first_byte": 7.0})
        assert "reverse" in available_codecs(local)
    finally:
        local.unregister(plugin)
    assert "reverse" not in available_codecs(local)


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(st.binary(max_size=48), st.text(max_size=48).map(str.encode)),
       codec=st.sampled_from([None, "json", "cayenne_lpp", "network_server", "dragino_lht65",
                              "dragino_lse01", "milesight_em300"]))
def test_fuzz_every_decoder_through_the_plugin_manager(payload: bytes, codec: str | None) -> None:
    pm = _PM
    try:
        label, fields = decode_fields(pm, _up(payload), codec)
    except DecodeError:
        return
    assert isinstance(fields, dict) and label in available_codecs(pm)


_PM = make_plugin_manager(load_entry_points=False)

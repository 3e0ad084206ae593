"""The typed-struct (msgspec) fast path of the ChirpStack v4 parse changes no result: for every
body it accepts, the uplink equals the general path's; what it does not vouch for goes to
the general path, whose rejects (and reasons) stay as they were."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.types import RawUplink
from plugins.sources.mqtt import shapes, typed_v4
from plugins.sources.mqtt.fields import UplinkShapeError, parse_time

FORMATS = Path(__file__).resolve().parents[2] / "shared" / "formats"
if not FORMATS.is_dir():
    FORMATS = Path("/work/shared/formats")
TOPIC = "application/app/device/0101010101010101/event/up"
NOW = 1_700_000_000.0

pytestmark = pytest.mark.skipif(not typed_v4.AVAILABLE, reason="msgspec not installed")


def general(body: bytes) -> RawUplink | str:
    """The general path's answer (stdlib JSON + field checks), or its reject reason."""
    try:
        doc = shapes.loads_json(body, "malformed_json")
        if not isinstance(doc, dict):
            return "not_object"
        return shapes._PARSERS["chirpstack_v4"](doc, NOW)
    except UplinkShapeError as exc:
        return exc.reason
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError):
        return "bad_field"


def check(body: bytes) -> bool:
    """Assert the fast path agrees with the general one; True when it took the body."""
    fast = typed_v4.parse_v4(body, NOW)
    ref = general(body)
    if fast is not None:
        assert isinstance(ref, RawUplink), f"fast path accepted what the general path rejects ({ref}): {body!r}"
        assert fast == ref, body
        return True
    # parse_uplink (fast path, then general) answers exactly as the general path alone
    try:
        got: RawUplink | str = shapes.parse_uplink(None, body, "chirpstack_v4", received_at=NOW)
    except UplinkShapeError as exc:
        got = exc.reason
    assert got == ref
    return False


def vectors() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(FORMATS.glob("chirpstack_v4_up*.json"))]


def test_shared_vectors_take_the_fast_path_and_equal_the_general_one() -> None:
    docs = vectors()
    assert docs
    for doc in docs:
        assert check(json.dumps(doc).encode())


def test_parse_uplink_uses_it_for_auto_and_v4() -> None:
    body = json.dumps(vectors()[0]).encode()
    for shape in ("auto", "chirpstack_v4"):
        up = shapes.parse_uplink(TOPIC, body, shape, received_at=NOW)
        assert up == general(body)
        assert up.device_id == "0101010101010101" and up.payload == b"\xaa" and up.radio.rssi == -36.0


@pytest.mark.parametrize("mutate", [
    lambda d: d.__setitem__("fPort", "7"),  # a numeric string: the general path takes it
    lambda d: d.__setitem__("fPort", 7.0),
    lambda d: d.__setitem__("fPort", 256),
    lambda d: d.__setitem__("fPort", True),
    lambda d: d.__setitem__("fCnt", 2**32),
    lambda d: d.__setitem__("fCnt", -1),
    lambda d: d.__setitem__("data", "not base64!"),
    lambda d: d.__setitem__("data", None),
    lambda d: d.__setitem__("time", 1700000000),
    lambda d: d.__setitem__("time", "yesterday"),
    lambda d: d.pop("time"),
    lambda d: d.__setitem__("object", [1, 2]),
    lambda d: d.__setitem__("object", {}),
    lambda d: d.__setitem__("object", {"t": 21.5, "n": {"x": [1, 2.5]}}),
    lambda d: d.__setitem__("deduplicationId", 5),
    lambda d: d.__setitem__("deduplicationId", "x" * 200),
    lambda d: d["deviceInfo"].__setitem__("devEui", "01010101"),
    lambda d: d["deviceInfo"].__setitem__("devEui", "ABCDEFABCDEF0123"),
    lambda d: d["deviceInfo"].pop("devEui"),
    lambda d: d.__setitem__("deviceInfo", None),
    lambda d: d.__setitem__("rxInfo", []),
    lambda d: d.__setitem__("rxInfo", None),
    lambda d: d.__setitem__("rxInfo", [{}, {"snr": 3}]),
    lambda d: d.__setitem__("rxInfo", [{"rssi": -90, "gatewayId": "a"}, {"rssi": -40, "gatewayId": "B" * 16,
                                                                        "time": "2024-01-01T00:00:01Z"}]),
    lambda d: d.__setitem__("rxInfo", [{"rssi": -40}, {"rssi": -40, "snr": 1}]),
    lambda d: d.__setitem__("rxInfo", [{"rssi": "x"}]),
    lambda d: d["txInfo"]["modulation"]["lora"].__setitem__("spreadingFactor", 4),
    lambda d: d["txInfo"]["modulation"]["lora"].__setitem__("bandwidth", "125000"),
    lambda d: d["txInfo"].__setitem__("frequency", -1),
    lambda d: d["txInfo"].__setitem__("modulation", None),
    lambda d: d.__setitem__("txInfo", 3),
])
def test_edge_cases_agree(mutate: Any) -> None:
    doc = copy.deepcopy(vectors()[0])
    mutate(doc)
    check(json.dumps(doc).encode())


@pytest.mark.parametrize("body", [
    b"", b"[]", b"null", b"{", b'{"deviceInfo": {"devEui": "0101010101010101"}, "fPort": NaN}',
    b'{"deviceInfo": {"devEui": "0101010101010101"}, "object": {"x": 1e400}}',
    b'\xef\xbb\xbf{"deviceInfo": {"devEui": "0101010101010101"}}',
    '{"deviceInfo": {"devEui": "0101010101010101"}}'.encode("utf-16"),
    b'{"deviceInfo": {"devEui": "0101010101010101"}, "fPort": 1, "fPort": 2}',
    b'{"deviceInfo": {"devEui": "0101010101010101", "deviceName": "\\ud800"}}',
])
def test_odd_bodies_agree(body: bytes) -> None:
    check(body)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=20), st.sampled_from(["qg==", "0101010101010101", "2024-02-29T23:59:59.123456789+02:00"]))


@given(st.lists(st.tuples(st.sampled_from(["time", "fPort", "fCnt", "data", "deduplicationId", "object", "rxInfo",
                                           "txInfo", "deviceInfo", "devEui", "rssi", "snr", "gatewayId", "frequency",
                                           "spreadingFactor", "bandwidth"]), _scalars), max_size=4),
       st.integers(0, 2**31))
def test_fuzzed_fields_agree(changes: list[tuple[str, Any]], seed: int) -> None:
    doc = copy.deepcopy(vectors()[0])
    rng = random.Random(seed)
    for key, value in changes:
        # the key where it lives in the message (top level, deviceInfo, a reception, lora)
        rx_list = doc.get("rxInfo")
        first_rx = rx_list[0] if isinstance(rx_list, list) and rx_list else None
        where = {"devEui": doc.get("deviceInfo"), "rssi": first_rx, "snr": first_rx, "gatewayId": first_rx,
                 "frequency": doc.get("txInfo"), "spreadingFactor": None, "bandwidth": None}.get(key, doc)
        if key in ("spreadingFactor", "bandwidth") and isinstance(doc.get("txInfo"), dict):
            mod = doc["txInfo"].get("modulation")
            where = mod.get("lora") if isinstance(mod, dict) else None
        if isinstance(where, dict):
            where[key] = value if rng.random() < 0.9 else {"nested": value}
    check(json.dumps(doc).encode())


def test_parse_time_cache_keeps_every_digit() -> None:
    a = parse_time("2022-07-18T09:34:15.775023242+00:00")
    b = parse_time("2022-07-18T09:34:15.1Z")
    c = parse_time("2022-07-18T09:34:15+02:00")
    assert a == 1658136855.0 + 775023242 / 10**9
    assert b == 1658136855.0 + 0.1
    assert c == 1658136855.0 - 7200
    assert parse_time("2022-02-30T00:00:00Z") is None and parse_time("2022-02-30T00:00:00Z") is None


@pytest.mark.parametrize("text", ["2022-07-18T09:34:15.775023242+00:00", "2022-07-18T09:34:15.1Z", "2022-07-18T09:34:15Z",
                                  "2022-07-18T09:34:15+02:00", "2022-07-18T09:34:15-05:30", "2022-07-18T09:34:15,5z",
                                  "2022-07-18T09:34:15.1234567890123Z", "2022-07-18T09:34:15.Z", "2022-07-18T09:34:15.1x",
                                  "2022-07-18T09:34:15+0200", "2022-07-18T09:34:15", "2022-07-18T09:34:15.\u0661Z",
                                  " 2022-07-18T09:34:15Z", "2022-07-18T09:34:15Z ", "2022-07-18T09:34:15+2:00"])
def test_fast_time_equals_parse_time(text: str) -> None:
    text = text.encode().decode("unicode_escape")
    parse_time("2022-07-18T09:34:15Z")  # the second is cached
    assert typed_v4.fast_time(text) == parse_time(text)

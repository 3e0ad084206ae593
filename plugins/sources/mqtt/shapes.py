"""Uplink wire shapes: MQTT message (topic, body) -> RawUplink.

Shapes (``shape=`` names, also used by the MQTT source's config):

- ``chirpstack_v4``: topic ``application/<app>/device/<dev_eui>/event/up``. ``data``
  (base64), ``deviceInfo.devEui``/``deviceName``, ``fCnt``, ``fPort``, ``time``, ``deduplicationId``,
  ``rxInfo[].rssi/snr/gatewayId``, ``txInfo.frequency``,
  ``txInfo.modulation.lora.spreadingFactor/bandwidth`` (Hz), ``object``.
- ``chirpstack_v3``: same topic (v3.11+; older ``.../device/<eui>/up`` and ``/rx``).
  ``devEUI`` (base64 of the 8 bytes, or hex in the legacy marshaler), ``rxInfo[].gatewayID``
  (base64; legacy ``mac`` hex), ``loRaSNR``, ``txInfo.loRaModulationInfo.bandwidth`` in kHz
  (legacy ``dataRate.spreadFactor``), ``objectJSON`` (the decoded object as a JSON
  *string*); no top-level time, so the first gateway's ``rxInfo[].time`` is used.
- ``tts_v3``: The Things Stack, topic ``v3/<app>[@tenant]/devices/<device>/up``.
  ``end_device_ids.dev_eui`` (device id ``end_device_ids.device_id`` when there is no EUI),
  ``uplink_message.frm_payload``/``f_port``/``f_cnt``/``decoded_payload``/``rx_metadata[]``/
  ``settings.data_rate.lora``/``settings.frequency`` (a string). TTS omits fields that
  hold their default value, so a missing ``f_cnt`` is 0; a missing ``f_port`` stays None.
- ``json``: this project's plain shape, for anything that is not a network server::

      {"device_id": "a840...", "values": {"temperature": 21.5}}          # pre-decoded
      {"device_id": "a840...", "payload_hex": "0367..."}                  # raw bytes
      {"device_id": "a840...", "payload_b64": "A2cBEA==", "f_port": 2}    # raw bytes

  Optional keys: ``time`` (ISO 8601 string or UNIX seconds), ``f_port``, ``f_cnt``,
  ``device_name``, ``rssi``, ``snr``, ``gateway_id``. ``values`` becomes
  ``RawUplink.decoded`` (decoded by the ``network_server`` decoder).

``auto`` picks the shape from the body's keys (``deviceInfo`` -> v4, ``devEUI`` -> v3,
``end_device_ids`` + ``uplink_message`` -> TTS, ``device_id`` -> json). When a topic is
given and it is a known event topic other than an uplink (join, ack, status...), the
message is refused with ``not_uplink``.

Common rules: the DevEUI is normalised to 16 lower-case hex digits; ISO times (with
nanosecond fractions) become UNIX seconds, and a missing or unreadable time falls back to
the receive time; radio metadata comes from the gateway with the strongest RSSI; JSON
``NaN``/``Infinity`` and numbers that overflow a float are refused.

Contract: ``parse_uplink`` returns a RawUplink or raises ``UplinkShapeError`` whose
``reason`` is one of ``too_large``, ``malformed_json``, ``not_object``, ``unknown_shape``,
``not_uplink``, ``missing_device_id``, ``bad_device_id``, ``bad_base64``, ``bad_hex``,
``bad_field``, ``bad_object``; no other exception escapes.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Callable
from typing import Any

from gateway.types import RadioMeta, RawUplink
from plugins.sources.mqtt import typed_v4
from plugins.sources.mqtt.fields import (
    HEX16,
    JSON_DECODER,
    UplinkShapeError,
    field_b64,
    field_dev_eui,
    field_float,
    field_hex,
    field_int,
    field_list,
    field_obj,
    field_str,
    loads_json,
    parse_time,
    topic_matches,
)

# the field readers' error, time parser and decoder are part of this module's interface too
__all__ = ["JSON_DECODER", "MAX_BODY_BYTES", "SHAPES", "UplinkShapeError", "detect_shape", "parse_time",
           "parse_uplink", "topic_matches"]

MAX_BODY_BYTES = 256 * 1024
SHAPES: tuple[str, ...] = ("auto", "chirpstack_v4", "chirpstack_v3", "tts_v3", "json")



def _best_rx(rx_list: list[Any], name: str) -> dict[str, Any]:
    """The reception with the highest RSSI (the first when none has one)."""
    best: dict[str, Any] = {}
    best_rssi = -math.inf
    for i, rx in enumerate(rx_list):
        rx = field_obj(rx, f"{name}[{i}]")
        rssi = field_float(rx.get("rssi"), "rssi")
        if not best or (rssi is not None and rssi > best_rssi):
            best = rx
            best_rssi = rssi if rssi is not None else best_rssi
    return best


def _decoded(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UplinkShapeError("bad_object", f"{name} is not an object")
    return value or None


# -- shapes ---------------------------------------------------------------------------


def _chirpstack_v4(doc: dict[str, Any], now: float) -> RawUplink:
    info = field_obj(doc.get("deviceInfo"), "deviceInfo")
    rx = _best_rx(field_list(doc.get("rxInfo"), "rxInfo"), "rxInfo")
    tx = field_obj(doc.get("txInfo"), "txInfo")
    lora = field_obj(field_obj(tx.get("modulation"), "txInfo.modulation").get("lora"), "txInfo.modulation.lora")
    ts = parse_time(doc.get("time")) or parse_time(rx.get("time"))
    return RawUplink(
        device_id=field_dev_eui(info.get("devEui"), "deviceInfo.devEui"),
        received_at=ts if ts is not None else now,
        payload=field_b64(doc.get("data"), "data"),
        f_port=field_int(doc.get("fPort"), "fPort", 0, 255),
        f_cnt=field_int(doc.get("fCnt"), "fCnt", 0, 2**32 - 1),
        radio=RadioMeta(
            rssi=field_float(rx.get("rssi"), "rssi"),
            snr=field_float(rx.get("snr"), "snr"),
            spreading_factor=field_int(lora.get("spreadingFactor"), "spreadingFactor", 5, 12),
            frequency_hz=field_int(tx.get("frequency"), "frequency"),
            bandwidth_hz=field_int(lora.get("bandwidth"), "bandwidth"),
            gateway_id=_gateway_hex(rx.get("gatewayId"), "gatewayId"),
        ),
        decoded=_decoded(doc.get("object"), "object"),
        device_name=field_str(info.get("deviceName"), "deviceInfo.deviceName"),
        shape="chirpstack_v4",
        dedup_id=_dedup_id(doc.get("deduplicationId")),
    )


def _dedup_id(value: Any) -> str | None:
    """ChirpStack's ``deduplicationId`` (a UUID string) when usable; anything else is ignored
    (it only serves the ingest's redelivery check, never rejects an uplink)."""
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def _gateway_hex(value: Any, name: str) -> str | None:
    text = field_str(value, name)
    return text.lower() if text and HEX16.fullmatch(text) else text


def _v3_id(value: Any, name: str, required: bool) -> str | None:
    """v3 marshals bytes as base64 (``AgICAgICAgI=``); the legacy marshaler used hex."""
    text = field_str(value, name)
    if not text:
        if required:
            raise UplinkShapeError("missing_device_id", name)
        return None
    if HEX16.fullmatch(text):
        return text.lower()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UplinkShapeError("bad_device_id" if required else "bad_base64", name) from exc
    if len(raw) != 8:
        raise UplinkShapeError("bad_device_id" if required else "bad_field", name)
    return raw.hex()


def _chirpstack_v3(doc: dict[str, Any], now: float) -> RawUplink:
    rx = _best_rx(field_list(doc.get("rxInfo"), "rxInfo"), "rxInfo")
    tx = field_obj(doc.get("txInfo"), "txInfo")
    mod = field_obj(tx.get("loRaModulationInfo"), "txInfo.loRaModulationInfo")
    legacy = field_obj(tx.get("dataRate"), "txInfo.dataRate")
    bw_khz = field_float(mod.get("bandwidth", legacy.get("bandwidth")), "bandwidth")
    sf = mod.get("spreadingFactor", legacy.get("spreadFactor"))
    object_json = field_str(doc.get("objectJSON"), "objectJSON")
    decoded = (_decoded(loads_json(object_json, "bad_object"), "objectJSON") if object_json
               else _decoded(doc.get("object"), "object"))
    ts = parse_time(doc.get("time")) or parse_time(rx.get("time"))
    gateway = rx.get("gatewayID", rx.get("mac"))
    return RawUplink(
        device_id=_v3_id(doc.get("devEUI"), "devEUI", True) or "",
        received_at=ts if ts is not None else now,
        payload=field_b64(doc.get("data"), "data"),
        f_port=field_int(doc.get("fPort"), "fPort", 0, 255),
        f_cnt=field_int(doc.get("fCnt"), "fCnt", 0, 2**32 - 1),
        radio=RadioMeta(
            rssi=field_float(rx.get("rssi"), "rssi"),
            snr=field_float(rx.get("loRaSNR"), "loRaSNR"),
            spreading_factor=field_int(sf, "spreadingFactor", 5, 12),
            frequency_hz=field_int(tx.get("frequency"), "frequency"),
            bandwidth_hz=int(bw_khz * 1000) if bw_khz is not None else None,
            gateway_id=_v3_id(gateway, "gatewayID", False),
        ),
        decoded=decoded,
        device_name=field_str(doc.get("deviceName"), "deviceName"),
        shape="chirpstack_v3",
    )


def _tts_v3(doc: dict[str, Any], now: float) -> RawUplink:
    ids = field_obj(doc.get("end_device_ids"), "end_device_ids")
    up = field_obj(doc.get("uplink_message"), "uplink_message")
    rx = _best_rx(field_list(up.get("rx_metadata"), "rx_metadata"), "rx_metadata")
    settings = field_obj(up.get("settings"), "settings")
    lora = field_obj(field_obj(settings.get("data_rate"), "settings.data_rate").get("lora"), "data_rate.lora")
    gateway_ids = field_obj(rx.get("gateway_ids"), "gateway_ids")
    name = field_str(ids.get("device_id"), "end_device_ids.device_id")
    eui = field_str(ids.get("dev_eui"), "end_device_ids.dev_eui")
    if eui:
        device_id = field_dev_eui(eui, "end_device_ids.dev_eui")
    elif name:
        device_id = name
    else:
        raise UplinkShapeError("missing_device_id", "end_device_ids")
    ts = (parse_time(up.get("received_at")) or parse_time(doc.get("received_at"))
          or parse_time(rx.get("received_at")) or parse_time(rx.get("time")))
    f_cnt = field_int(up.get("f_cnt"), "f_cnt", 0, 2**32 - 1)
    return RawUplink(
        device_id=device_id,
        received_at=ts if ts is not None else now,
        payload=field_b64(up.get("frm_payload"), "frm_payload"),
        f_port=field_int(up.get("f_port"), "f_port", 0, 255),
        f_cnt=0 if f_cnt is None else f_cnt,
        radio=RadioMeta(
            rssi=field_float(rx.get("rssi"), "rssi"),
            snr=field_float(rx.get("snr"), "snr"),
            spreading_factor=field_int(lora.get("spreading_factor"), "spreading_factor", 5, 12),
            frequency_hz=field_int(settings.get("frequency"), "frequency"),
            bandwidth_hz=field_int(lora.get("bandwidth"), "bandwidth"),
            gateway_id=field_str(gateway_ids.get("gateway_id"), "gateway_id"),
        ),
        decoded=_decoded(up.get("decoded_payload"), "decoded_payload"),
        device_name=name,
        shape="tts_v3",
    )


def _plain_json(doc: dict[str, Any], now: float) -> RawUplink:
    raw_id = doc.get("device_id")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    device_id = (field_str(raw_id, "device_id") or "").strip()
    if not device_id:
        raise UplinkShapeError("missing_device_id", "device_id")
    if len(device_id) > 128 or not device_id.isprintable():
        raise UplinkShapeError("bad_device_id", "device_id")
    if HEX16.fullmatch(device_id):
        device_id = device_id.lower()
    values = doc.get("values")
    if values is not None:
        payload = b""
        decoded = _decoded(values, "values")
    elif "payload_hex" in doc:
        payload, decoded = field_hex(doc.get("payload_hex"), "payload_hex"), None
    elif "payload_b64" in doc:
        payload, decoded = field_b64(doc.get("payload_b64"), "payload_b64"), None
    else:
        raise UplinkShapeError("bad_field", "needs values, payload_hex or payload_b64")
    ts = parse_time(doc.get("time"))
    return RawUplink(
        device_id=device_id,
        received_at=ts if ts is not None else now,
        payload=payload,
        f_port=field_int(doc.get("f_port"), "f_port", 0, 255),
        f_cnt=field_int(doc.get("f_cnt"), "f_cnt", 0, 2**32 - 1),
        radio=RadioMeta(
            rssi=field_float(doc.get("rssi"), "rssi"),
            snr=field_float(doc.get("snr"), "snr"),
            gateway_id=field_str(doc.get("gateway_id"), "gateway_id"),
        ),
        decoded=decoded,
        device_name=field_str(doc.get("device_name"), "device_name"),
        shape="json",
    )


_PARSERS: dict[str, Callable[[dict[str, Any], float], RawUplink]] = {
    "chirpstack_v4": _chirpstack_v4,
    "chirpstack_v3": _chirpstack_v3,
    "tts_v3": _tts_v3,
    "json": _plain_json,
}


def detect_shape(doc: dict[str, Any]) -> str:
    """The shape of a parsed body, from its keys; raises UplinkShapeError(unknown_shape)."""
    if "deviceInfo" in doc:
        return "chirpstack_v4"
    if "devEUI" in doc or "applicationID" in doc:
        return "chirpstack_v3"
    if "end_device_ids" in doc and "uplink_message" in doc:
        return "tts_v3"
    if "device_id" in doc:
        return "json"
    raise UplinkShapeError("unknown_shape")


def _check_topic(topic: str) -> None:
    parts = topic.split("/")
    if len(parts) >= 5 and parts[0] == "application" and parts[2] == "device":
        event = "/".join(parts[4:])
        if event not in ("event/up", "up", "rx"):
            raise UplinkShapeError("not_uplink", topic[:120])
    elif len(parts) >= 5 and parts[0] == "v3" and parts[2] == "devices":
        if "/".join(parts[4:]) != "up":
            raise UplinkShapeError("not_uplink", topic[:120])


def parse_uplink(topic: str | None, body: bytes, shape: str = "auto", *,
                 received_at: float | None = None) -> RawUplink:
    """Parse one message into a RawUplink; see the module docstring for shapes and errors.

    ``received_at`` (UNIX seconds, default now) is used when the message has no time.
    """
    if shape not in SHAPES:
        raise UplinkShapeError("unknown_shape", f"no shape named {shape!r}")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise UplinkShapeError("bad_field", "body is not bytes")
    if len(body) > MAX_BODY_BYTES:
        raise UplinkShapeError("too_large", f"{len(body)} bytes")
    if topic:
        _check_topic(topic)
    if shape == "chirpstack_v4" or shape == "auto":
        # typed structs (msgspec) first: None means "not vouched for", never a reject
        fast = typed_v4.parse_v4(body, time.time() if received_at is None else received_at)
        if fast is not None:
            return fast
    doc = loads_json(bytes(body), "malformed_json")
    if not isinstance(doc, dict):
        raise UplinkShapeError("not_object", type(doc).__name__)
    if shape == "auto":
        shape = detect_shape(doc)
    now = time.time() if received_at is None else received_at
    try:
        return _PARSERS[shape](doc, now)
    except UplinkShapeError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        raise UplinkShapeError("bad_field", f"{type(exc).__name__}: {exc}"[:120]) from exc

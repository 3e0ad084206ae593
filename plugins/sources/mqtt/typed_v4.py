"""ChirpStack v4 uplinks parsed into typed structs (msgspec), the fast path of ``shapes``.

msgspec decodes a body straight into the typed structs below, checking types in C while it
parses (bench/RESULTS.md 9: about 5x less CPU per message than the stdlib decoder plus the
field checks in Python). This path only ever *accepts*: ``parse_v4`` returns the
``RawUplink`` when the message is one it can vouch for, and None otherwise (a type msgspec
does not take, a number out of range, an odd reception list, invalid base64, ...). The
caller then parses the message with ``shapes.parse_uplink``'s general path, which either
accepts it too (a shape this path does not cover: numeric strings for integers, a
reception without RSSI) or rejects it with its counted reason. So the fast path changes
no result: for every body it accepts, the uplink equals the general path's
(``tests/test_typed_v4.py`` checks that on the shared vectors and fuzzed bodies).

What it covers: ``deviceInfo.devEui`` (16 hex digits), ``deviceName``, ``data`` (base64),
``fPort`` 0-255, ``fCnt`` 0-2^32-1, ``time`` (ISO string, ``fields.parse_time``; the
best reception's ``time`` when absent), ``deduplicationId``, ``rxInfo[]`` whose every
entry has an RSSI (the strongest is picked, the first on ties), ``txInfo.frequency``,
``txInfo.modulation.lora.spreadingFactor`` (5-12) and ``bandwidth``, ``object`` (its
numbers finite). Unknown keys are ignored, as the general path ignores them.

Without msgspec installed ``AVAILABLE`` is False and ``parse_v4`` always returns None.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from gateway.types import RadioMeta, RawUplink
from plugins.sources.mqtt.fields import _SECONDS, HEX16, parse_time

try:
    import msgspec
except ImportError:  # pragma: no cover - msgspec is a runtime dependency; the general path still works
    msgspec = None  # type: ignore[assignment]

AVAILABLE = msgspec is not None

_U32 = 2**32 - 1


if msgspec is not None:
    class _DeviceInfo(msgspec.Struct):
        devEui: str
        deviceName: str | None = None

    class _Rx(msgspec.Struct):
        rssi: float | None = None
        snr: float | None = None
        gatewayId: str | None = None
        time: str | None = None

    class _Lora(msgspec.Struct):
        bandwidth: int | None = None
        spreadingFactor: int | None = None

    class _Modulation(msgspec.Struct):
        lora: _Lora | None = None

    class _Tx(msgspec.Struct):
        frequency: int | None = None
        modulation: _Modulation | None = None

    class _UplinkV4(msgspec.Struct):
        deviceInfo: _DeviceInfo
        data: str | None = None
        time: str | None = None
        fPort: int | None = None
        fCnt: int | None = None
        deduplicationId: str | None = None
        rxInfo: list[_Rx] | None = None
        txInfo: _Tx | None = None
        object: dict[str, Any] | None = None

    _DECODER: Any = msgspec.json.Decoder(_UplinkV4)
    _ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def _finite(value: Any, depth: int = 0) -> bool:
    """Every number in a decoded ``object`` is finite (the general decoder refuses the rest)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return depth < 64 and all(_finite(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return depth < 64 and all(_finite(v, depth + 1) for v in value)
    return True


def fast_time(value: str | None) -> float | None:
    """``fields.parse_time`` of an ISO string, to the same float, without its regex when the
    date and second were seen before (``fields._SECONDS``) and the rest is ``[.digits]`` then
    ``Z`` or ``+HH:MM``; anything else goes to ``parse_time``."""
    if value is None:
        return None
    base = _SECONDS.get(value[:19])
    if base is None:
        return parse_time(value)
    rest = value[19:]
    if rest[-1:] in ("Z", "z"):
        zone, frac = 0, rest[:-1]
    elif len(rest) >= 6 and rest[-6] in "+-" and rest[-3] == ":" and rest[-5:-3].isdigit() and rest[-2:].isdigit():
        zone = int(rest[-5:-3]) * 3600 + int(rest[-2:]) * 60
        zone, frac = (zone if rest[-6] == "+" else -zone), rest[:-6]
    else:
        return parse_time(value)
    digits = frac[1:]
    if frac:
        if frac[0] not in ".," or not digits.isascii() or not digits.isdigit():
            return parse_time(value)
        digits = digits[:9]
        base += int(digits) / 10 ** len(digits)
    if zone:
        base -= zone
    return base


def parse_v4(body: bytes, now: float) -> RawUplink | None:
    """The uplink of a ChirpStack v4 body, or None when the general path must decide."""
    if msgspec is None:
        return None
    try:
        u = _DECODER.decode(body)
    except _ERRORS:
        return None
    eui = u.deviceInfo.devEui
    if not eui or not HEX16.fullmatch(eui):
        return None
    f_port, f_cnt = u.fPort, u.fCnt
    if (f_port is not None and not 0 <= f_port <= 255) or (f_cnt is not None and not 0 <= f_cnt <= _U32):
        return None
    rx: Any = None
    rx_list = u.rxInfo
    if rx_list:
        best = -math.inf
        for r in rx_list:
            rssi = r.rssi
            if rssi is None or not math.isfinite(rssi):
                return None  # the general path's pick among receptions without RSSI
            if rssi > best or rx is None:
                rx, best = r, rssi
        snr = rx.snr
        if snr is not None and not math.isfinite(snr):
            return None
    tx = u.txInfo
    sf = bw = freq = None
    if tx is not None:
        freq = tx.frequency
        if freq is not None and not 0 <= freq <= 2**63:
            return None
        mod = tx.modulation
        lora = mod.lora if mod is not None else None
        if lora is not None:
            sf, bw = lora.spreadingFactor, lora.bandwidth
            if (sf is not None and not 5 <= sf <= 12) or (bw is not None and not 0 <= bw <= 2**63):
                return None
    obj = u.object
    if obj is not None and not _finite(obj):
        return None
    data = u.data
    if data:
        try:
            payload = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        payload = b""
    ts = fast_time(u.time) or (parse_time(rx.time) if rx is not None else None)
    gateway = rx.gatewayId if rx is not None else None
    if gateway and HEX16.fullmatch(gateway):
        gateway = gateway.lower()
    dedup = u.deduplicationId
    return RawUplink(
        device_id=eui.lower(),
        received_at=ts if ts is not None else now,
        payload=payload,
        f_port=f_port,
        f_cnt=f_cnt,
        radio=RadioMeta(
            rssi=rx.rssi if rx is not None else None,
            snr=rx.snr if rx is not None else None,
            spreading_factor=sf,
            frequency_hz=freq,
            bandwidth_hz=bw,
            gateway_id=gateway,
        ),
        decoded=obj or None,
        device_name=u.deviceInfo.deviceName,
        shape="chirpstack_v4",
        dedup_id=dedup if dedup is not None and 0 < len(dedup) <= 128 else None,
    )

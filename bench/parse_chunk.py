"""Parse a chunk of ChirpStack v4 uplink JSON: stdlib json vs orjson vs msgspec (typed structs).

    .venv/bin/python bench/parse_chunk.py [--chunk 1000] [--rounds 15] [--kind bench,full]

Needs ``pip install orjson msgspec`` in the venv (bench-only; neither is a project
dependency); a missing one is skipped with a message.

Two message kinds: ``bench`` is the compact uplink the e2e benches publish
(``bench/_common.uplink_body``, about 480 bytes); ``full`` is the ChirpStack v4 example of
``/work/shared/formats/chirpstack_v4_up.json`` (tags, rx metadata, about 700 bytes compact),
each message with its own devEui, fCnt, time and payload.

Rows, per message (µs, min and median of interleaved rounds over the same chunk):

* parse only: bytes -> Python objects (dicts), no field checks;
* to RawUplink: what the source needs, i.e. device id, time, payload bytes, fPort, fCnt, radio
  metadata, ``object``; ``project`` is today's ``plugins/sources/mqtt/shapes.parse_uplink``
  (stdlib json + field checks); ``orjson + shapes`` swaps only the JSON decoder under the same
  field checks; ``msgspec typed`` decodes into typed structs (unknown keys ignored, types
  checked by msgspec) then builds RawUplink with the same payload/time helpers;
  ``msgspec typed, whole chunk`` decodes the chunk joined as one JSON array in one call.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, dev_eui, iso, machine, payload_variants, uplink_body  # noqa: E402

try:  # typed structs for msgspec: only the fields the source needs; unknown keys are ignored
    import msgspec
except ImportError:  # reported in variants()
    msgspec = None
else:
    class DeviceInfo(msgspec.Struct):
        devEui: str
        deviceName: str | None = None

    class Rx(msgspec.Struct):
        rssi: float | None = None
        snr: float | None = None
        gatewayId: str | None = None

    class Lora(msgspec.Struct):
        bandwidth: int | None = None
        spreadingFactor: int | None = None

    class Modulation(msgspec.Struct):
        lora: Lora | None = None

    class Tx(msgspec.Struct):
        frequency: int | None = None
        modulation: Modulation | None = None

    class UplinkV4(msgspec.Struct):
        deviceInfo: DeviceInfo
        data: str = ""
        time: str | None = None
        fPort: int | None = None
        fCnt: int | None = None
        rxInfo: list[Rx] = []
        txInfo: Tx | None = None
        object: dict[str, Any] | None = None

    class UplinkV4Native(msgspec.Struct):  # time and payload decoded by msgspec itself (microsecond time)
        deviceInfo: DeviceInfo
        data: bytes = b""
        time: datetime.datetime | None = None
        fPort: int | None = None
        fCnt: int | None = None
        rxInfo: list[Rx] = []
        txInfo: Tx | None = None
        object: dict[str, Any] | None = None



SHARED_EXAMPLE = REPO.parent / "shared" / "formats" / "chirpstack_v4_up.json"
TOPIC = "application/app-1/device/{eui}/event/up"


def make_chunk(kind: str, n: int) -> list[bytes]:
    payloads = payload_variants()
    t0 = 1_764_800_000.0
    out = []
    template = json.loads((SHARED_EXAMPLE if SHARED_EXAMPLE.is_file() else Path("/work/shared/formats/chirpstack_v4_up.json"))
                          .read_text()) if kind == "full" else None
    for i in range(n):
        eui = dev_eui(i % 1000)
        if template is None:
            out.append(uplink_body(eui, t0 + i * 0.001, i, payloads[i % 256]))
        else:
            doc = json.loads(json.dumps(template))
            doc["deviceInfo"]["devEui"] = eui
            doc["fCnt"] = i
            doc["time"] = iso(t0 + i * 0.001)
            doc["data"] = payloads[i % 256]
            doc["rxInfo"][0]["rssi"] = -30 - i % 60
            out.append(json.dumps(doc, separators=(",", ":")).encode())
    return out


def variants(chunk: list[bytes]) -> dict[str, Callable[[], Any]]:
    from plugins.sources.mqtt import shapes
    from gateway.types import RadioMeta, RawUplink

    topics = [TOPIC.format(eui=json.loads(b)["deviceInfo"]["devEui"]) for b in chunk]
    out: dict[str, Callable[[], Any]] = {}
    loads = json.loads
    out["parse only: stdlib json.loads"] = lambda: [loads(b) for b in chunk]
    dec = shapes._JSON  # the project's decoder (NaN/Infinity refused, finite floats)
    out["parse only: stdlib, project's decoder"] = lambda: [dec.decode(b.decode()) for b in chunk]
    parse = shapes.parse_uplink
    out["to RawUplink: project (stdlib json + shapes)"] = lambda: [parse(t, b, "chirpstack_v4") for t, b in zip(topics, chunk)]
    try:
        import orjson
    except ImportError:
        print("orjson not installed: skipped (pip install orjson)")
    else:
        ol = orjson.loads
        out["parse only: orjson"] = lambda: [ol(b) for b in chunk]
        v4 = shapes._chirpstack_v4
        out["to RawUplink: orjson + shapes' field checks"] = lambda: [v4(ol(b), 0.0) for b in chunk]
    if msgspec is None:
        print("msgspec not installed: skipped (pip install msgspec)")
        return out

    md = msgspec.json.decode
    out["parse only: msgspec (untyped dicts)"] = lambda: [md(b) for b in chunk]
    typed = msgspec.json.Decoder(UplinkV4)
    out["parse only: msgspec typed structs"] = lambda: [typed.decode(b) for b in chunk]
    parse_time, b64 = shapes.parse_time, base64.b64decode

    def to_raw(u: UplinkV4) -> RawUplink:
        rx = max(u.rxInfo, key=lambda r: r.rssi if r.rssi is not None else -1e9) if u.rxInfo else Rx()
        lora = u.txInfo.modulation.lora if u.txInfo and u.txInfo.modulation and u.txInfo.modulation.lora else Lora()
        ts = parse_time(u.time)
        return RawUplink(device_id=u.deviceInfo.devEui.lower(), received_at=ts if ts is not None else 0.0,
                         payload=b64(u.data, validate=True), f_port=u.fPort, f_cnt=u.fCnt,
                         radio=RadioMeta(rssi=rx.rssi, snr=rx.snr, spreading_factor=lora.spreadingFactor,
                                         frequency_hz=u.txInfo.frequency if u.txInfo else None,
                                         bandwidth_hz=lora.bandwidth, gateway_id=rx.gatewayId),
                         decoded=u.object or None, device_name=u.deviceInfo.deviceName, shape="chirpstack_v4")

    out["to RawUplink: msgspec typed + RawUplink"] = lambda: [to_raw(typed.decode(b)) for b in chunk]
    native = msgspec.json.Decoder(UplinkV4Native)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

    def to_raw_native(u: UplinkV4Native) -> RawUplink:
        rx = max(u.rxInfo, key=lambda r: r.rssi if r.rssi is not None else -1e9) if u.rxInfo else Rx()
        lora = u.txInfo.modulation.lora if u.txInfo and u.txInfo.modulation and u.txInfo.modulation.lora else Lora()
        return RawUplink(device_id=u.deviceInfo.devEui.lower(),
                         received_at=(u.time - epoch).total_seconds() if u.time is not None else 0.0,
                         payload=u.data, f_port=u.fPort, f_cnt=u.fCnt,
                         radio=RadioMeta(rssi=rx.rssi, snr=rx.snr, spreading_factor=lora.spreadingFactor,
                                         frequency_hz=u.txInfo.frequency if u.txInfo else None,
                                         bandwidth_hz=lora.bandwidth, gateway_id=rx.gatewayId),
                         decoded=u.object or None, device_name=u.deviceInfo.deviceName, shape="chirpstack_v4")

    out["to RawUplink: msgspec typed, time and base64 by msgspec"] = lambda: [to_raw_native(native.decode(b)) for b in chunk]
    whole = msgspec.json.Decoder(list[UplinkV4])
    out["to RawUplink: msgspec typed, whole chunk in one call"] = lambda: [
        to_raw(u) for u in whole.decode(b"[" + b",".join(chunk) + b"]")]
    return out


def check_same(chunk: list[bytes], fns: dict[str, Callable[[], Any]]) -> None:
    """Every to-RawUplink variant yields the project's uplinks (device, payload, counters, radio)."""
    ref = fns["to RawUplink: project (stdlib json + shapes)"]()
    key = [(u.device_id, u.payload, u.f_port, u.f_cnt, u.radio.rssi, u.radio.snr, u.radio.spreading_factor,
            round(u.received_at, 6)) for u in ref]
    for name, fn in fns.items():
        if name.startswith("to RawUplink") and "project" not in name:
            got = [(u.device_id, u.payload, u.f_port, u.f_cnt, u.radio.rssi, u.radio.snr, u.radio.spreading_factor,
                    round(u.received_at, 6)) for u in fn()]
            assert got == key, f"{name} differs from the project's parse"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--kind", default="bench,full")
    args = ap.parse_args()
    print(machine())
    for kind in args.kind.split(","):
        chunk = make_chunk(kind, args.chunk)
        fns = variants(chunk)
        check_same(chunk, fns)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) / len(chunk) * 1e6)
        ref = min(times["parse only: stdlib json.loads"])
        ref_raw = min(times["to RawUplink: project (stdlib json + shapes)"])
        size = statistics.mean(len(b) for b in chunk)
        print(f"\nkind {kind}: {len(chunk)} messages, mean {size:.0f} bytes, {args.rounds} interleaved rounds")
        print("| variant | µs/msg min | µs/msg median | vs stdlib (same row group) |\n| --- | ---: | ---: | ---: |")
        for name, ts in times.items():
            base = ref if name.startswith("parse only") else ref_raw
            print(f"| {name} | {min(ts):.2f} | {statistics.median(ts):.2f} | {base / min(ts):.2f}x |")


if __name__ == "__main__":
    main()

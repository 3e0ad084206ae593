"""Long fuzz run over every parser of outside input: a million inputs or more, no crash allowed.

Targets (each gets the same share of the inputs):

- ``frame``: the bridge frame decoder (``FrameDecoder.feed``), byte streams;
- ``line:<protocol>``: the serial drivers (bridge, reyax, rak3172, seeed_e5), byte streams;
- ``payload:<codec>``: the payload decoders (Cayenne LPP, JSON, Dragino LHT65/LSE01,
  Milesight EM300-TH);
- ``uplink:<shape>``: the uplink JSON shapes (ChirpStack v4/v3, TTS v3, plain JSON, auto).

Inputs are mutated real vectors (``firmware_bridge/vectors``, the payload and line samples
and uplink JSON documents in ``/work/shared/formats``, generated LPP payloads) and random
bytes; JSON documents are also mutated structurally (a value swapped for another type,
a key dropped). Each input ends in exactly one outcome: accepted, a counted reject with its
reason, or a crash (any other exception). Prints the counts; exits 1 on any crash.

    python bench/fuzz_long_run.py --inputs 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from firmware_bridge.drivers import PROTOCOLS, make_driver  # noqa: E402
from firmware_bridge.frame_codec import FrameDecoder  # noqa: E402
from gateway.types import DecodeError  # noqa: E402
from plugins.decoders.cayenne_lpp import decode_lpp  # noqa: E402
from plugins.decoders.dragino_lht65 import decode_lht65  # noqa: E402
from plugins.decoders.dragino_lse01 import decode_lse01  # noqa: E402
from plugins.decoders.json_payload import decode_json  # noqa: E402
from plugins.decoders.milesight_em300 import decode_em300_th  # noqa: E402
from plugins.sources.mqtt.shapes import UplinkShapeError, parse_uplink  # noqa: E402

FORMATS = REPO.parent / "shared" / "formats"
VECTORS = REPO / "firmware_bridge" / "vectors"


# ---- seed corpora -----------------------------------------------------------------------------
def hex_lines(name: str) -> list[bytes]:
    """Lines of a formats file that are only hex byte pairs (the documented sample payloads)."""
    out = []
    path = FORMATS / name
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        text = line.split("#")[0].strip().replace(" ", "")
        if len(text) >= 2 and len(text) % 2 == 0:
            try:
                out.append(bytes.fromhex(text))
            except ValueError:
                continue
    return out


def text_lines(name: str, prefixes: tuple[str, ...]) -> list[bytes]:
    path = FORMATS / name
    if not path.exists():
        return []
    return [line.strip().encode() + b"\r\n" for line in path.read_text(errors="replace").splitlines()
            if line.strip().startswith(prefixes)]


def wire_vectors() -> list[bytes]:
    out = []
    for path in sorted(VECTORS.glob("*.hex")):
        for line in path.read_text().splitlines():
            if line.startswith("wire="):
                out.append(bytes.fromhex(line[5:].strip()))
    return out


def lpp_samples(rng: random.Random) -> list[bytes]:
    import struct
    out = hex_lines("lpp_vectors.txt")
    for _ in range(50):
        out.append(struct.pack(">BBh", 1, 0x67, rng.randint(-400, 600)) + struct.pack(">BBB", 2, 0x68, rng.randint(0, 200))
                   + struct.pack(">BBH", 3, 0x74, rng.randint(250, 420)))
    return out


def uplink_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    topics = {"chirpstack_v4": "application/app/device/0011223344556677/event/up",
              "chirpstack_v3": "application/1/device/0011223344556677/rx",
              "ttn_v3": "v3/app@ttn/devices/dev1/up"}
    for path in sorted(FORMATS.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        topic = next((t for k, t in topics.items() if path.name.startswith(k)), "sensors/x/up")
        if isinstance(doc, dict):
            docs.append((topic, doc))
    docs.append(("sensors/plain-1/up", {"device_id": "plain-1", "values": {"t": 21.5, "h": 40}, "time": 1.7e9}))
    return docs


# ---- mutation ---------------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:
            b.insert(rng.randint(0, len(b)), rng.randrange(256))
        elif op == 3 and b:
            del b[rng.randrange(len(b))]
        elif op == 4 and b:
            b = b[: rng.randrange(len(b) + 1)]
        elif op == 5 and b:
            i = rng.randrange(len(b))
            b[i:i] = b[i: i + rng.randint(1, 16)]
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(b)


def random_bytes(rng: random.Random, most: int = 96) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, most)))


ODD_VALUES: list[Any] = [None, True, 0, -1, 2**70, 1e308, -0.0, "", "x" * 300, "zz", "AAAA", "!!", [], {}, [1, "a"],
                         {"a": None}, "2024-13-45T99:99:99Z", "NaN", 3.5, "0011223344556677", "ffffffffffffffffff"]


def mutate_json(rng: random.Random, doc: Any) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path: list[Any] = []
        node = doc
        while isinstance(node, (dict, list)) and node and rng.random() < 0.7:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append((node, key))
            node = node[key]
        if not path:
            return copy.deepcopy(rng.choice(ODD_VALUES))
        parent, key = path[-1]
        if isinstance(parent, dict) and rng.random() < 0.25:
            del parent[key]
        else:
            parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    return doc


# ---- the run ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    wires = wire_vectors()
    lines = {
        "bridge": wires,
        "reyax": text_lines("rylr896_rylr998.txt", ("+RCV", "+OK", "+ERR", "+READY")) or [b"+RCV=50,5,HELLO,-99,40\r\n"],
        "rak3172": text_lines("rak3172_rui3_p2p.txt", ("+EVT", "OK", "AT_")) or [b"+EVT:RXP2P:-60:11:AABBCCDD\r\n"],
        "seeed_e5": text_lines("seeed_lora_e5_test_mode.txt", ("+TEST", "+MODE", "+AT")) or [b'+TEST: RX "AABB"\r\n'],
    }
    payloads: dict[str, tuple[Callable[[bytes], Any], list[bytes]]] = {
        "cayenne_lpp": (decode_lpp, lpp_samples(rng)),
        "json": (decode_json, [json.dumps({"t": 21.5, "h": 40, "bat": 3.6}).encode(), b'{"a": {"b": 1}}']),
        "dragino_lht65": (decode_lht65, hex_lines("lht65.txt") or [bytes.fromhex("CBF60B0D0376010ADD7FFF")]),
        "dragino_lse01": (decode_lse01, hex_lines("lse01.txt") or [bytes.fromhex("CE2900F107A5099B6E2890")]),
        "milesight_em300_th": (decode_em300_th, hex_lines("milesight_em300_th.txt") or [bytes.fromhex("0175320367C80004683C")]),
    }
    docs = uplink_docs()
    shapes = ["chirpstack_v4", "chirpstack_v3", "tts_v3", "json", "auto"]

    counts: dict[str, Counter[str]] = {}
    crashes: list[str] = []

    def outcome(target: str, result: str) -> None:
        counts.setdefault(target, Counter())[result] += 1

    def run_stream(target: str, feed: Callable[[bytes], Any], get_counts: Callable[[], Counter[str]], data: bytes) -> None:
        before = Counter(get_counts())
        try:
            feed(data)
        except Exception as exc:  # noqa: BLE001 - the point of the run: any exception is a crash
            outcome(target, "CRASH")
            crashes.append(f"{target}: {type(exc).__name__}: {exc} on {data[:64].hex()}")
            return
        delta = Counter(get_counts())
        delta.subtract(before)
        got = {k: v for k, v in delta.items() if v > 0}
        if not got:
            outcome(target, "incomplete_or_empty")  # nothing finished (no delimiter yet): nothing to count
        for k, v in got.items():
            counts.setdefault(target, Counter())[k] += v

    def run_one(target: str, call: Callable[[], Any], reject: type[Exception], shown: str) -> None:
        """One whole input: accepted, a typed reject (counted by its reason), or a crash."""
        try:
            call()
            outcome(target, "accepted")
        except reject as exc:
            outcome(target, f"reject:{getattr(exc, 'reason', 'unknown')}")
        except Exception as exc:  # noqa: BLE001 - the point of the run: any other exception is a crash
            outcome(target, "CRASH")
            crashes.append(f"{target}: {type(exc).__name__}: {exc} on {shown}")

    targets = ["frame"] + [f"line:{p}" for p in PROTOCOLS] + [f"payload:{c}" for c in payloads] + [f"uplink:{s}" for s in shapes]
    started = time.monotonic()
    for i in range(args.inputs):
        target = targets[i % len(targets)]
        kind, _, name = target.partition(":")
        if kind == "frame":
            dec = FrameDecoder()
            data = mutate_bytes(rng, rng.choice(wires)) if rng.random() < 0.8 else random_bytes(rng)
            run_stream(target, lambda d, dec=dec: dec.feed(d + b"\x00"), lambda dec=dec: dec.counts, data)
        elif kind == "line":
            drv = make_driver(name)
            seed = rng.choice(lines[name])
            data = mutate_bytes(rng, seed) if rng.random() < 0.8 else random_bytes(rng)
            tail = b"\x00" if name == "bridge" else b"\r\n"
            run_stream(target, lambda d, drv=drv, t=tail: drv.feed(d + t), lambda drv=drv: drv.counts, data)
        elif kind == "payload":
            fn, seeds = payloads[name]
            data = mutate_bytes(rng, rng.choice(seeds)) if rng.random() < 0.8 else random_bytes(rng, 40)
            run_one(target, lambda: fn(data), DecodeError, data.hex())
        else:
            topic, doc = rng.choice(docs)
            r = rng.random()
            if r < 0.6:
                body = json.dumps(mutate_json(rng, doc), allow_nan=True).encode()
            elif r < 0.9:
                body = mutate_bytes(rng, json.dumps(doc).encode())
            else:
                body = random_bytes(rng, 200)
            run_one(target, lambda: parse_uplink(topic, body, name), UplinkShapeError, repr(body[:120]))
    elapsed = time.monotonic() - started

    total_crashes = sum(c["CRASH"] for c in counts.values())
    if args.json:
        print(json.dumps({"inputs": args.inputs, "seed": args.seed, "seconds": round(elapsed, 1),
                          "crashes": total_crashes, "counts": {t: dict(c) for t, c in counts.items()}}, indent=1))
    else:
        print(f"fuzz long run: {args.inputs} inputs, seed {args.seed}, {elapsed:.0f} s, crashes {total_crashes}")
        for target in targets:
            c = counts.get(target, Counter())
            n = sum(c.values())
            parts = ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))
            print(f"  {target:<28} {n:>8}  {parts}")
    for line in crashes[:20]:
        print("CRASH", line)
    return 1 if total_crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())

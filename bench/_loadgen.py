"""Load generator (its own process): ChirpStack v4 uplinks for many devices, QoS 1, at a
fixed rate or flat out; each body's ``time`` is the moment it is published.

    python bench/_loadgen.py --port P --devices 1000 --rate 1000 --seconds 10 [--fcnt-start 100]
    python bench/_loadgen.py --port P --devices 1000 --count 50000        # flat out

Prints one JSON line: published, acked, seconds, rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paho.mqtt import client as mqtt  # noqa: E402

from _common import TOPIC, body_template, dedup_field, dev_eui, payload_index, payload_variants  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.0, help="readings/s; 0 = flat out")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--count", type=int, default=0, help="flat out: this many messages")
    ap.add_argument("--fcnt-start", type=int, default=1000)
    args = ap.parse_args()

    topics = [TOPIC.format(eui=dev_eui(i)).encode() for i in range(args.devices)]
    parts = [body_template(dev_eui(i)) for i in range(args.devices)]
    euis = [dev_eui(i) for i in range(args.devices)]
    payloads = payload_variants()
    acked = [0]
    lock = threading.Lock()

    def on_publish(client, userdata, mid, reason_code, properties):  # noqa: ANN001
        with lock:
            acked[0] += 1

    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-loadgen-{time.time_ns()}")
    client.max_inflight_messages_set(65535)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(args.host, args.port)
    client.loop_start()
    gmtime, strftime, now = time.gmtime, time.strftime, time.time
    fcnt = [args.fcnt_start] * args.devices
    sent = 0
    total = args.count if args.count else int(round(args.rate * args.seconds))
    t0 = time.monotonic()
    sec_cache: tuple[int, str] = (-1, "")

    def one(k: int) -> None:
        nonlocal sec_cache
        d = k % args.devices
        ts = now()
        s = int(ts)
        if s != sec_cache[0]:
            sec_cache = (s, strftime("%Y-%m-%dT%H:%M:%S", gmtime(s)))
        head, mid, tail = parts[d]
        c = fcnt[d]
        fcnt[d] = c + 1
        body = f'{head}{sec_cache[1]}.{int((ts - s) * 1e6):06d}Z{mid}{c}{dedup_field(euis[d], c)},"data":"{payloads[payload_index(d, c)]}{tail}'
        client.publish(topics[d].decode(), body.encode(), qos=1)

    if args.rate <= 0:
        for k in range(total):
            one(k)
        sent = total
    else:
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * args.rate) + 1)
            while sent < due:
                one(sent)
                sent += 1
            time.sleep(0.0005)
    publish_s = time.monotonic() - t0
    deadline = time.monotonic() + 60
    while acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"published": sent, "acked": acked[0], "publish_seconds": publish_s, "seconds": elapsed,
                      "rate": sent / publish_s if publish_s else 0.0}), flush=True)


if __name__ == "__main__":
    main()

"""The MQTT receive path alone: the mqtt source draining a backlog of ChirpStack v4 uplinks
from a private Mosquitto into a counter (no pipeline), plain paho vs the batched client
(plugins.sources.mqtt.receive), alternating in one run (RESULTS.md section 1d).

    .venv/bin/python bench/mqtt_receive.py [--count 20000] [--repeat 2]

Modes, each run with both clients:

- ``paho``: the client only (on_message counts): what paho itself costs per message;
- ``source``: the mqtt source as the gateway runs it (shape parse, metrics, emit);
- ``source+busy``: the same while another thread of the process runs pure-Python CPU work
  (a stand-in for the pipeline thread): how the receive thread fares when it must win
  the GIL back after every system call.

Prints messages/s (first to last message) and, without the busy thread, the process's
CPU time per message. The 2 cores are shared: compare the two clients within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Mosquitto, machine  # noqa: E402
from e2e_mqtt import loadgen, use_receive_client  # noqa: E402


def busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i * i


def drain(opts, ctx, mode: str, n: int) -> dict:  # noqa: ANN001
    from plugins.sources.mqtt.source import MqttSource

    count = [0]
    t = [0.0, 0.0]
    done = threading.Event()

    def emit(_: object) -> None:
        c = count[0] = count[0] + 1
        if c == 1:
            t[0] = time.perf_counter()
        if c == n:
            t[1] = time.perf_counter()
            done.set()

    stop = threading.Event()
    competitor = threading.Thread(target=busy, args=(stop,), daemon=True) if mode.endswith("busy") else None
    if competitor:
        competitor.start()
    src = MqttSource("bench", opts, ctx)
    if mode == "paho":
        src._on_message = lambda client, userdata, msg: emit(msg)  # type: ignore[method-assign]
    cpu0 = time.process_time()
    src.start(emit)
    client = type(src._client).__name__
    done.wait(300)
    cpu = time.process_time() - cpu0
    stop.set()
    src.stop()
    if competitor:
        competitor.join()
    return {"mode": mode, "client": client, "received": count[0],
            "per_s": (n - 1) / (t[1] - t[0]) if t[1] else float("nan"),
            "cpu_us_per_msg": None if competitor else cpu / n * 1e6, "load_average": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--modes", default="paho,source,source+busy")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from gateway.contracts import PluginContext
    from gateway.metrics import Metrics
    from plugins.sources.mqtt.source import MqttSource, MqttSourceOptions, TopicOptions

    print(machine())
    rows = []
    with Mosquitto() as broker:
        ctx = PluginContext(metrics=Metrics(), gateway_id="bench", state_dir="/tmp")
        opts = MqttSourceOptions(host=broker.host, port=broker.port, client_id="bench-receive",
                                 topics=[TopicOptions(topic="application/+/device/+/event/up", shape="chirpstack_v4")])
        src = MqttSource("bench", opts, ctx)  # register the persistent session
        src.start(lambda _: None)
        src.wait_connected(10)
        time.sleep(0.3)
        src.stop()
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                for kind in ("paho", "batched"):
                    use_receive_client(kind)
                    loadgen(broker.port, args.devices, count=args.count)
                    row = drain(opts, ctx, mode, args.count)
                    rows.append(row)
                    cpu = f", {row['cpu_us_per_msg']:.1f} us CPU/msg" if row["cpu_us_per_msg"] is not None else ""
                    print(f"{mode:12s} {row['client']:22s} {row['per_s']:8.0f} msg/s{cpu} "
                          f"(load {row['load_average']:.2f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

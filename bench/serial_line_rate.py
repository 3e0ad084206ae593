"""Serial line rate: good frames per second through the gateway's serial source versus
what the line can carry, over a real pseudo-terminal driven by the simulator.

    .venv/bin/python bench/serial_line_rate.py [--seconds 5] [--protocols bridge,reyax,rak3172,seeed_e5]

For each baud rate (115200 and 921600) and protocol, the simulator sends back to back at
the line rate (10 bits a byte) for ``--seconds``; the serial source (PortSupervisor +
driver, the same code the daemon runs) emits RawUplinks that are only counted. Prints
frames/s received, the line's capacity in frames/s for that record size, the ratio, and
whether every good frame arrived in order (a correctness check, also in
tests/test_simulator.py). A pty has no real baud rate: the simulator paces itself by
each byte's line time, never faster than the line, keeping one burst queued ahead like a
UART FIFO; a ratio below 1 is the simulator's thread or the reader falling behind. The last rows
run the simulator unpaced, so the gateway side (reader thread + driver) is the limit.
"""

from __future__ import annotations

import argparse
import threading
import time

from firmware_bridge.simulator import PtySimulator
from gateway.contracts import PluginContext
from gateway.metrics import Metrics
from gateway.types import RawUplink
from plugins.sources.serial_source import SerialSource, SerialSourceOptions


def run(protocol: str, baud: int, seconds: float, nodes: int = 8) -> dict[str, float]:
    got: list[RawUplink] = []
    lock = threading.Lock()

    def emit(uplink: RawUplink) -> None:
        with lock:
            got.append(uplink)

    with PtySimulator(protocol, nodes, baud=baud, full_speed=True) as sim:
        opts = SerialSourceOptions.model_validate({"port": sim.path, "protocol": protocol, "baudrate": baud})
        source = SerialSource("bench", opts, PluginContext(metrics=Metrics()))
        source.start(emit)
        while not source.connected():
            time.sleep(0.005)
        t0 = time.monotonic()
        n0 = len(got)
        time.sleep(seconds)
        with lock:
            n1 = len(got)
        elapsed = time.monotonic() - t0
        sim.wait_drained()
        time.sleep(0.1)  # the reader thread hands the last bytes on
        source.stop()
        sent = sim.records("ok")
        frame_len = len(sim.module.render(1, 0, (1).to_bytes(2, "big") + sent[0].payload
                                          if protocol in ("rak3172", "seeed_e5") else sent[0].payload, -70, 5))
    in_order = [(u.device_id, u.payload) for u in got] == [(r.device_id, r.payload) for r in sent][: len(got)]
    rate = (n1 - n0) / elapsed
    capacity = baud / 10 / frame_len
    return {"rate": rate, "capacity": capacity, "frame_len": frame_len, "in_order": float(in_order),
            "missing": float(len(sent) - len(got))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--protocols", default="bridge,reyax,rak3172,seeed_e5")
    args = parser.parse_args()
    print(f"{'baud':>7} {'protocol':<9} {'bytes/rec':>9} {'frames/s':>9} {'capacity':>9} {'ratio':>6}  all good frames")
    for baud in (115200, 921600):
        for protocol in args.protocols.split(","):
            r = run(protocol, baud, args.seconds)
            ok = "yes" if r["in_order"] and r["missing"] == 0 else f"NO (missing {r['missing']:.0f})"
            print(f"{baud:>7} {protocol:<9} {r['frame_len']:>9.0f} {r['rate']:>9.0f} {r['capacity']:>9.0f} "
                  f"{r['rate'] / r['capacity']:>6.2f}  {ok}", flush=True)
    # headroom: the simulator unpaced (a pty is as fast as the kernel), the gateway side is the limit
    for protocol in args.protocols.split(","):
        r = run(protocol, 100_000_000, args.seconds)
        ok = "yes" if r["in_order"] and r["missing"] == 0 else f"NO (missing {r['missing']:.0f})"
        print(f"{'unpaced':>7} {protocol:<9} {r['frame_len']:>9.0f} {r['rate']:>9.0f} {'-':>9} {'-':>6}  {ok}",
              flush=True)


if __name__ == "__main__":
    main()

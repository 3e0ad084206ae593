"""Memory: RSS of the gateway with the model loaded, with 10,000 devices tracked (each one
calibrated and scoring), and its growth over a soak at a fixed rate.

    .venv/bin/python bench/memory.py [--devices 10000] [--soak 60] [--rate 1000]
    .venv/bin/python bench/memory.py --soak 600          # the full 10-minute soak

The gateway runs in this process (mqtt source on a private Mosquitto, file + mqtt
handlers, the bundled model). Its devices are filled by driving the pipeline from this
thread with readings built straight as RawUplinks (162 per device: calibration 32 steps +
128 windows, bench/_common.py, so every device ends calibrated with a full window); the
soak then feeds the running pipeline thread at ``--rate`` readings/s round-robin over the
same devices (each reading scored). RSS is read from /proc/self/status (VmRSS); during the
soak also every 0.2 s for its peak (a checkpoint's transient: every ``checkpoint_interval_s``,
60 s by default, the state of the devices that changed is encoded at once, and the first
one after the fill comes at the start of the soak).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TOPIC, WARM_READINGS, Mosquitto, dev_eui, gateway_config, lpp, machine, make_gateway, payload_index, uplink_body  # noqa: E402


def rss_mb(field: str = "VmRSS") -> float:
    """RSS now (VmRSS), or its high-water mark since the start (VmHWM: the kernel's peak, no sampling)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--soak", type=float, default=60.0, help="seconds (600 for the full soak)")
    ap.add_argument("--rate", type=float, default=1000.0)
    args = ap.parse_args()
    import numpy as np

    from plugins.sources.mqtt.shapes import parse_uplink

    print(machine())
    rng = np.random.default_rng(7)
    payloads = [lpp(20 + 0.25 * rng.normal(), 60 + rng.normal()) for _ in range(256)]
    gc.collect()
    rss0 = rss_mb()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        gw = make_gateway(gateway_config(broker.host, broker.port, Path(tmp) / "state", max_devices=args.devices + 10))
        gw.start()
        gc.collect()
        rss_model = rss_mb()
        print(f"RSS: interpreter + imports {rss0:.0f} MB; gateway started, model loaded: {rss_model:.0f} MB")
        p = gw.pipeline
        p.stop()  # fill from this thread
        # one parsed uplink, re-addressed per device and reading: the bench keeps only each
        # device's DevEUI string (which the gateway keys its state on anyway), not 10,000
        # parsed uplinks (5.6 MB that would count as device memory here)
        base = parse_uplink(TOPIC.format(eui=dev_eui(0)), uplink_body(dev_eui(0), 0.0, 0, "AWcA0gJoeAN0AWg="),
                            "chirpstack_v4")
        euis = [dev_eui(d) for d in range(args.devices)]

        def uplink(d: int, ts: float, k: int) -> Any:
            eui = euis[d]
            return dataclasses.replace(base, device_id=eui, device_name="node-" + eui[-4:], received_at=ts, f_cnt=k,
                                       payload=payloads[payload_index(d, k)])
        t0 = time.perf_counter()
        start = time.time() - WARM_READINGS * 60
        chunked = hasattr(p, "_handle_chunk")  # the tree after issue 15: chunks of 256, as the daemon hands them on
        for k in range(WARM_READINGS):
            ts = start + k * 60
            if chunked:
                for c in range(0, args.devices, 256):
                    p._handle_chunk([uplink(d, ts, k) for d in range(c, min(c + 256, args.devices))], None)
            else:
                for d in range(args.devices):
                    p._handle(uplink(d, ts, k))
            p._flush()
        fill_s = time.perf_counter() - t0
        gc.collect()
        rss_dev = rss_mb()
        scored = gw.metrics.get("windows_scored_total")
        print(f"{args.devices} devices x {WARM_READINGS} readings in {fill_s:.0f} s ({len(p.windows)} tracked, "
              f"{scored:.0f} windows scored): RSS {rss_dev:.0f} MB "
              f"(+{rss_dev - rss_model:.0f} MB, {(rss_dev - rss_model) * 1024 / args.devices:.1f} KB/device); "
              f"peak so far (VmHWM) {rss_mb('VmHWM'):.1f} MB")
        try:  # how much of that is the allocator keeping freed calibration buffers
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
            print(f"  after malloc_trim(0) (bench only; the daemon does not call it): RSS {rss_mb():.0f} MB")
        except OSError:
            pass
        p.start()
        stop = threading.Event()
        fed = [0]

        def feed() -> None:
            k, n, t_start = WARM_READINGS, 0, time.monotonic()
            while not stop.is_set():
                due = int((time.monotonic() - t_start) * args.rate)
                while n < due:
                    d = n % args.devices
                    if d == 0 and n:
                        k += 1
                    p.ingest(uplink(d, time.time(), k))
                    n += 1
                fed[0] = n
                time.sleep(0.005)

        peak = [0.0]

        def sample_peak() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.2)

        w0 = gw.metrics.get("windows_scored_total")
        cp0, cps0 = gw.metrics.get("checkpoints_total"), gw.metrics.get("checkpoint_seconds_total")
        threading.Thread(target=sample_peak, daemon=True).start()
        th = threading.Thread(target=feed, daemon=True)
        samples = [(0.0, rss_mb())]
        t_soak = time.monotonic()
        th.start()
        while time.monotonic() - t_soak < args.soak:
            time.sleep(min(10.0, args.soak / 6))
            gc.collect()
            samples.append((time.monotonic() - t_soak, rss_mb()))
            print(f"  soak {samples[-1][0]:5.0f} s: RSS {samples[-1][1]:.1f} MB, {fed[0]} readings fed, "
                  f"queue {p.queue_depth()}")
        stop.set()
        th.join()
        p.idle.wait(30)
        scored = gw.metrics.get("windows_scored_total") - w0
        first = samples[1][1] if len(samples) > 2 else samples[0][1]
        growth = (samples[-1][1] - first) / first * 100
        print(f"soak {args.soak:.0f} s at {args.rate:.0f} readings/s: {fed[0]} readings, {scored:.0f} windows scored; "
              f"RSS {samples[0][1]:.1f} -> {samples[-1][1]:.1f} MB; growth after the first sample {growth:+.2f} %")
        print(f"  peak RSS during the soak (0.2 s samples) {peak[0]:.1f} MB, of the whole run (VmHWM) "
              f"{rss_mb('VmHWM'):.1f} MB; "
              f"{gw.metrics.get('checkpoints_total') - cp0:.0f} checkpoints, "
              f"{gw.metrics.get('checkpoint_seconds_total') - cps0:.2f} s spent in them (capture + write)")
        gw.stop()


if __name__ == "__main__":
    main()

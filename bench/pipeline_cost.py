"""Per-reading cost of our Python, without the broker: the same gateway as bench/e2e_mqtt.py
(model, policy, outbox, handlers), its pipeline driven from this thread so every
microsecond is ours, on pre-warmed devices (inference on every reading).

    .venv/bin/python bench/pipeline_cost.py [--devices 1000] [--readings 40000] [--profile]

Prints microseconds per reading for: parse (ChirpStack v4 JSON -> RawUplink, what the MQTT
source does on paho's thread), the pipeline (decode, window, calibration/standardise,
policy, batch, ONNX Runtime, scoring, decisions), and of that the ONNX Runtime share.
``--profile`` adds a cProfile table (tottime) of the pipeline part.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WARM_READINGS, TOPIC, Mosquitto, dev_eui, gateway_config, machine, make_gateway, payload_index, payload_variants, uplink_body  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--readings", type=int, default=40000)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    from gateway.uplink_shapes import parse_uplink

    print(machine())
    payloads = payload_variants()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        gw = make_gateway(gateway_config(broker.host, broker.port, Path(tmp) / "state", max_batch=args.max_batch))
        gw.start()
        p = gw.pipeline
        p.stop()  # drive it from this thread
        try:
            T = gw.runtime.window_length
            warm = WARM_READINGS
            rounds = warm + -(-args.readings // args.devices)
            t_start = time.time() - rounds
            bodies = [(TOPIC.format(eui=dev_eui(d)), uplink_body(dev_eui(d), t_start + k, k, payloads[payload_index(d, k)]))
                      for k in range(rounds) for d in range(args.devices)]
            n_warm = warm * args.devices
            for topic, body in bodies[:n_warm]:
                p._handle(parse_uplink(topic, body, "chirpstack_v4"))
            p._flush()
            live = bodies[n_warm:]
            t0 = time.perf_counter()
            ups = [parse_uplink(topic, body, "chirpstack_v4") for topic, body in live]
            t_parse = time.perf_counter() - t0
            m = gw.metrics
            w0, s0 = m.get("windows_scored_total"), m.get("inference_seconds_total")
            prof = cProfile.Profile() if args.profile else None
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            for up in ups:
                p._handle(up)
            p._flush()
            if prof:
                prof.disable()
            t_pipe = time.perf_counter() - t0
            n = len(ups)
            onnx = m.get("inference_seconds_total") - s0
            windows = m.get("windows_scored_total") - w0
            print(f"{n} readings, {args.devices} devices, {windows / n:.3f} windows scored per reading")
            print(f"parse     {t_parse / n * 1e6:7.1f} us/reading")
            print(f"pipeline  {t_pipe / n * 1e6:7.1f} us/reading  ({n / t_pipe:.0f} readings/s on one thread), "
                  f"of which ONNX Runtime {onnx / n * 1e6:.1f} us ({onnx / t_pipe:.0%})")
            print(f"together  {(t_parse + t_pipe) / n * 1e6:7.1f} us/reading = {n / (t_parse + t_pipe):.0f} readings/s")
            if prof:
                pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        finally:
            gw.stop()


if __name__ == "__main__":
    main()

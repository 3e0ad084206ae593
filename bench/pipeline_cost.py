"""Per-reading cost of our Python, without the broker: the same gateway as bench/e2e_mqtt.py
(model, policy, outbox, handlers), its pipeline driven from this thread so every
microsecond is ours, on pre-warmed devices (inference on every reading).

    .venv/bin/python bench/pipeline_cost.py [--devices 1000] [--readings 40000] [--profile] [--record]

Prints microseconds per reading for: parse (ChirpStack v4 JSON -> RawUplink, what the MQTT
source does on paho's thread), the pipeline (decode, window, calibration/standardise,
policy, batch, ONNX Runtime, scoring, decisions), and of that the ONNX Runtime share.
``--profile`` adds a cProfile table (tottime) of the pipeline part. ``--record`` turns the
reading recorder on ([record], default settings) and measures the pipeline in alternating
chunks with and without it in the same run: the pipeline thread's time (the recorder's
writer thread running beside it, as in the daemon), and that time plus waiting until the
writer has written the chunk (an upper bound: all of the writer's work counted).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    TOPIC,
    WARM_READINGS,
    Mosquitto,
    dev_eui,
    gateway_config,
    machine,
    make_gateway,
    payload_index,
    payload_variants,
    uplink_body,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--readings", type=int, default=40000)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--record", action="store_true", help="compare with and without the reading recorder")
    args = ap.parse_args()
    from plugins.sources.mqtt.shapes import parse_uplink

    print(machine())
    payloads = payload_variants()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        config = gateway_config(broker.host, broker.port, Path(tmp) / "state", max_batch=args.max_batch)
        if args.record:
            config["record"] = {"enabled": True}
        gw = make_gateway(config)
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
            recorder, p.recorder = p.recorder, None  # warm-up is not recorded
            for topic, body in bodies[:n_warm]:
                p._handle(parse_uplink(topic, body, "chirpstack_v4"))
            p._flush()
            live = bodies[n_warm:]
            t0 = time.perf_counter()
            ups = [parse_uplink(topic, body, "chirpstack_v4") for topic, body in live]
            t_parse = time.perf_counter() - t0
            if recorder is not None:
                compare_recording(p, recorder, gw.metrics, ups)
                return
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


def compare_recording(p, recorder, m, ups: list) -> None:
    """Chunks in groups of four (off, on, on, off: a linear drift cancels); the ratio is taken
    per group and the median reported, so load changes on a shared machine matter less.
    Then the recorder's own costs, each timed alone: put() on the pipeline thread, and the
    writer's formatting and writing per reading (a second recorder drained by stop())."""
    import statistics

    from gateway.ingest.decoding import decode_uplink
    from gateway.recording.config import RecordConfig
    from gateway.recording.recorder import ReadingRecorder

    chunk = max(250, len(ups) // 32)
    t = {"off": 0.0, "on": 0.0, "on_drained": 0.0}
    n = {"off": 0, "on": 0}
    groups: list[list[float]] = []
    for i, start in enumerate(range(0, len(ups), chunk)):
        part = ups[start:start + chunk]
        on = i % 4 in (1, 2)
        p.recorder = recorder if on else None
        t0 = time.perf_counter()
        for up in part:
            p._handle(up)
        p._flush()
        t1 = time.perf_counter()
        key = "on" if on else "off"
        t[key] += t1 - t0
        n[key] += len(part)
        if i % 4 == 0:
            groups.append([0.0, 0.0])
        groups[-1][1 if on else 0] += (t1 - t0) / len(part)
        if on:
            recorder.wake()
            while m.get("recorder_readings_total") + m.get("recorder_dropped_total") < n["on"]:
                time.sleep(0.0005)
            t["on_drained"] += time.perf_counter() - t0
    ratios = [on / off for off, on in groups if off and on]
    off, on, drained = (t["off"] / n["off"] * 1e6, t["on"] / n["on"] * 1e6, t["on_drained"] / n["on"] * 1e6)
    print(f"{n['off']} readings without recording, {n['on']} with, in alternating chunks of {chunk}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"pipeline without recorder  {off:7.1f} us/reading")
    print(f"pipeline with recorder     {on:7.1f} us/reading  (ratio of totals {on / off:.3f}; per group of 4 chunks: "
          f"median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f})")
    print(f"  + writer drained         {drained:7.1f} us/reading  (ratio {drained / off:.3f})")
    print(f"recorded {m.get('recorder_readings_total'):.0f}, dropped {m.get('recorder_dropped_total'):.0f}, "
          f"{m.get('recorder_bytes'):.0f} bytes ({m.get('recorder_bytes') / max(1, n['on']):.0f} per reading)")
    readings = [decode_uplink(p.pm, up, p.profiles) for up in ups]
    alone = ReadingRecorder(RecordConfig(enabled=True, flush_interval_s=60, queue_size=2 * len(ups) + 2),  # never woken early
                            Path(recorder.directory).parent / "alone", m)
    alone.start()
    t0 = time.perf_counter()
    for reading, profile in readings:
        alone.put(reading, profile, 2)
    t_put = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone.stop(timeout=60)
    t_write = time.perf_counter() - t0
    k = len(readings)
    print(f"recorder alone: put {t_put / k * 1e6:.2f} us/reading (pipeline thread), writer {t_write / k * 1e6:.2f} "
          f"us/reading (its own thread); together {(t_put + t_write) / k * 1e6 / off:.1%} of the pipeline's "
          f"{off:.1f} us")


if __name__ == "__main__":
    main()

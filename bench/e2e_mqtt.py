"""End to end over MQTT: a load generator publishes ChirpStack v4 uplinks (QoS 1) for many
devices to a private Mosquitto; the gateway (in this process: mqtt source, Cayenne LPP
decode, windows, the bundled model on every reading, alert policy, outbox, mqtt + file
alert handlers) consumes them.

    .venv/bin/python bench/e2e_mqtt.py [--devices 1000] [--backlog 40000] [--rates 100,1000,5000]
                                       [--seconds 10] [--repeat 2] [--receive batched] [--json out.json]

Measured, all in one run (the 2 cores are shared, so compare ratios, not absolutes):

1. Saturation: a backlog of ``--backlog`` uplinks is queued on the broker for two offline
   persistent sessions, then drained flat out, first by ``mosquitto_sub -q 1`` (the broker
   link's ceiling: a C client that only prints), then by the gateway (readings/s and
   windows scored/s from its metrics). ``--repeat`` alternates the pair. ``--receive
   paho,batched`` cycles the source's MQTT client per repeat (plain paho vs
   plugins.sources.mqtt.receive's batched client; bench-only switch) for a before/after in one run.
   Each drain also reports the gateway process's CPU time per reading (all its threads).
2. The model ceiling in the same process: the gateway's own ModelRuntime at the mean
   batch size seen during the drain (and at 64), same threads: pipeline-over-raw ratio.
3. Latency at fixed rates: the generator publishes at each rate for ``--seconds``; the
   ``time`` field of each uplink is its publish time, and a timing wrapper (bench only)
   around ``AlertPolicy.on_score`` records ``decision time - publish time`` for every
   window scored. p50/p99/max, and decisions per reading (1.0 = inference on every reading).

Calibration: the config sets ``calibration_steps = 32, calibration_windows = 128``
(bench/_common.py), and before measuring, every device is pre-warmed (162 readings each,
ingested straight into the pipeline), so each measured reading makes a due window that the
model scores (the "decisions per reading" column checks it). ``silent_min_s`` is an hour,
because the bench pauses the source between phases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
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

HERE = Path(__file__).resolve().parent
PY = sys.executable


def loadgen(port: int, devices: int, *, rate: float = 0.0, seconds: float = 0.0, count: int = 0,
            fcnt_start: int = 1000) -> dict:
    cmd = [PY, str(HERE / "_loadgen.py"), "--port", str(port), "--devices", str(devices),
           "--fcnt-start", str(fcnt_start)]
    cmd += ["--count", str(count)] if count else ["--rate", str(rate), "--seconds", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def sub_session(port: int, client_id: str, *, keep: bool) -> None:
    """Register (keep=True) or remove (keep=False) a mosquitto_sub persistent session."""
    cmd = ["mosquitto_sub", "-p", str(port), "-i", client_id, "-q", "1", "-t", "application/+/device/+/event/up", "-E"]
    if keep:
        cmd.insert(1, "-c")
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def sub_drain(port: int, client_id: str, n: int) -> float:
    """Drain ``n`` queued messages with mosquitto_sub; messages/s from first byte to exit."""
    proc = subprocess.Popen(["mosquitto_sub", "-c", "-p", str(port), "-i", client_id, "-q", "1",
                             "-t", "application/+/device/+/event/up", "-C", str(n), "-W", "120"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    t0 = time.perf_counter()
    lines = 0
    while True:
        chunk = proc.stdout.read1(1 << 16)
        if not chunk:
            break
        lines += chunk.count(b"\n")
    proc.wait()
    t1 = time.perf_counter()
    if lines < n - 1:
        print(f"mosquitto_sub: only {lines + 1} of {n} messages arrived")
    return lines / (t1 - t0)


class Probe:
    """Bench-only score observer: publish -> decision latency. The pipeline calls its score
    observers right after the alert policy decided on the window (per window in the tree
    before issue 15, per scored batch after it), so ``now - reading time`` is the decision's
    latency (the reading's time is its publish time)."""

    def __init__(self, pipeline) -> None:  # noqa: ANN001
        self.latencies: list[float] = []
        self.recording = False
        pipeline.score_observers = (*pipeline.score_observers, self)

    def observe_score(self, device_id, timestamp, score, details) -> None:  # noqa: ANN001
        if self.recording:
            self.latencies.append(time.time() - timestamp)


def source_emit(gw):  # noqa: ANN001, ANN201
    """The emit the daemon gives its source: the durable ingest emitter (ack after the
    ingest log, chunks handed on whole) with ``[state] durable_ingest``, else ``ingest``."""
    src = gw.sources[0]
    durability = getattr(gw, "durability", None)
    return gw.pipeline.ingest if durability is None else durability.emitter(src, src.name)


def wait_metric(gw, name: str, target: float, timeout: float = 300.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while gw.metrics.get(name) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} = {gw.metrics.get(name)} < {target}")
        time.sleep(0.01)


def use_receive_client(kind: str) -> None:
    """Bench-only: make the next source start use plain paho ("paho") or the batched client."""
    import plugins.sources.mqtt.receive as receive

    if not hasattr(receive, "_bench_supported"):
        receive._bench_supported = receive.batched_receive_supported  # type: ignore[attr-defined]
    receive.batched_receive_supported = (lambda: False) if kind == "paho" else receive._bench_supported  # type: ignore[attr-defined]


def drain_gateway(gw, n: int) -> dict:  # noqa: ANN001
    m = gw.metrics
    r0, w0, b0 = m.get("readings_total"), m.get("windows_scored_total"), m.get("inference_batches_total")
    src = gw.sources[0]
    cpu0 = time.process_time()
    src.start(source_emit(gw))
    # time from the first reading processed to the last
    while m.get("readings_total") == r0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    r_start = m.get("readings_total")
    while m.get("readings_total") < r0 + n:
        time.sleep(0.002)
    t1 = time.perf_counter()
    gw.pipeline.idle.wait(30)
    cpu = time.process_time() - cpu0
    readings = m.get("readings_total") - r_start
    windows = m.get("windows_scored_total") - w0
    batches = m.get("inference_batches_total") - b0
    return {"readings_per_s": readings / (t1 - t0), "windows_per_s": windows * readings / n / (t1 - t0),
            "windows_per_reading": windows / n, "mean_batch": windows / max(batches, 1),
            "cpu_us_per_reading": cpu / n * 1e6, "client": type(src._client).__name__,
            "load_average": os.getloadavg()[0]}


def raw_ceiling(runtime, batch: int, seconds: float = 2.0) -> float:  # noqa: ANN001
    x = np.random.default_rng(0).normal(size=(batch, runtime.window_length, 3)).astype(np.float32)
    for _ in range(5):
        runtime.run(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        runtime.run(x)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def warm_up(gw, devices: int, per_device: int) -> None:  # noqa: ANN001
    from plugins.sources.mqtt.shapes import parse_uplink

    payloads = payload_variants()
    start = time.time() - per_device - 5
    n0 = gw.metrics.get("readings_total")
    for k in range(per_device):
        for d in range(devices):
            eui = dev_eui(d)
            up = parse_uplink(TOPIC.format(eui=eui), uplink_body(eui, start + k, k, payloads[payload_index(d, k)]), "chirpstack_v4")
            up.source = "chirpstack"
            gw.pipeline.ingest(up)
    wait_metric(gw, "readings_total", n0 + devices * per_device)
    gw.pipeline.idle.wait(60)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000.0 if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--backlog", type=int, default=40000)
    ap.add_argument("--rates", default="100,1000,5000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--receive", default="batched", help="comma list cycled per repeat: paho, batched")
    ap.add_argument("--durable", choices=("on", "off"), default="on",
                    help="[state] durable_ingest: ack after the ingest log (default, as the daemon) or on arrival")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    result: dict = {"machine": machine(), "devices": args.devices, "backlog": args.backlog, "durable": args.durable}
    print(result["machine"])
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        sub_session(broker.port, "bench-sub", keep=True)
        config = gateway_config(broker.host, broker.port, Path(tmp) / "state", max_batch=args.max_batch,
                                max_delay_ms=args.max_delay_ms)
        config["state"] = {"durable_ingest": args.durable == "on"}
        gw = make_gateway(config)
        gw.start()
        probe = Probe(gw.pipeline)
        try:
            T = gw.runtime.window_length
            per_device = WARM_READINGS
            t = time.perf_counter()
            warm_up(gw, args.devices, per_device)
            print(f"warm-up: {args.devices} devices x {per_device} readings in {time.perf_counter() - t:.1f} s")
            fcnt = per_device  # frame counters continue without gaps (no frame_gap alerts)
            backlog = -(-args.backlog // args.devices) * args.devices  # whole rounds over the devices
            sat = []
            kinds = [k for k in args.receive.split(",") if k]
            for rep in range(args.repeat):
                use_receive_client(kinds[rep % len(kinds)])
                gw.sources[0].stop()
                gen = loadgen(broker.port, args.devices, count=backlog, fcnt_start=fcnt)
                if gen["acked"] < gen["published"]:
                    print(f"load generator: only {gen['acked']} of {gen['published']} acknowledged by the broker")
                fcnt += backlog // args.devices
                sub = sub_drain(broker.port, "bench-sub", backlog)
                g = drain_gateway(gw, backlog)
                row = {"generator_flat_out_per_s": gen["rate"], "mosquitto_sub_per_s": sub, **g,
                       "gateway_over_sub": g["readings_per_s"] / sub}
                sat.append(row)
                print(f"saturation #{rep + 1}: generator {gen['rate']:.0f}/s, mosquitto_sub drain {sub:.0f}/s, "
                      f"gateway {g['readings_per_s']:.0f} readings/s ({g['windows_per_reading']:.3f} windows/reading, "
                      f"mean batch {g['mean_batch']:.1f}) = {g['readings_per_s'] / sub:.2f} x mosquitto_sub; "
                      f"client {g['client']}, {g['cpu_us_per_reading']:.0f} us CPU/reading, load {g['load_average']:.2f}")
            sub_session(broker.port, "bench-sub", keep=False)
            result["saturation"] = sat
            mean_batch = int(round(float(np.mean([s["mean_batch"] for s in sat]))))
            ceil = {b: raw_ceiling(gw.runtime, b) for b in sorted({1, mean_batch, args.max_batch})}
            best = max(s["windows_per_s"] for s in sat)
            result["raw_ceiling_windows_per_s"] = ceil
            result["pipeline_over_raw"] = best / ceil[mean_batch]
            print("raw ONNX Runtime (same session, 1 thread): " + ", ".join(f"batch {b}: {v:.0f} windows/s" for b, v in ceil.items()))
            print(f"pipeline over raw at batch {mean_batch}: {best:.0f} / {ceil[mean_batch]:.0f} = {result['pipeline_over_raw']:.2f}")
            lat = {}
            for rate in [float(r) for r in args.rates.split(",") if r]:
                r0 = gw.metrics.get("readings_total")
                probe.latencies = []
                probe.recording = True
                seconds = max(1, round(rate * args.seconds / args.devices)) * args.devices / rate
                gen = loadgen(broker.port, args.devices, rate=rate, seconds=seconds, fcnt_start=fcnt)
                fcnt += gen["published"] // args.devices
                wait_metric(gw, "readings_total", r0 + gen["published"], timeout=120)
                gw.pipeline.idle.wait(10)
                probe.recording = False
                got = probe.latencies
                lat[str(int(rate))] = row = {
                    "published_per_s": gen["rate"], "decisions": len(got), "decisions_per_reading": len(got) / gen["published"],
                    "p50_ms": pct(got, 50), "p99_ms": pct(got, 99), "max_ms": pct(got, 100)}
                print(f"rate {rate:.0f}/s (published {gen['rate']:.0f}/s): {len(got)} decisions "
                      f"({row['decisions_per_reading']:.3f}/reading), p50 {row['p50_ms']:.1f} ms, "
                      f"p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms")
            result["latency"] = lat
            result["metrics"] = {k: v for k, v in gw.metrics.snapshot().items()
                                 if "dropped" in k or "quarantined" in k or "rejected" in k or "alert" in k}
            print("counters:", json.dumps(result["metrics"]))
        finally:
            gw.stop()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()

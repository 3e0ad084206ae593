"""The MQTT source with ``receive_process`` off and on, alternating in one run: sustained
readings/s draining a QoS 1 backlog, and CPU per reading of each process.

    .venv/bin/python bench/receive_process.py [--devices 1000] [--backlog 20000] [--repeat 3]
                                              [--inflight 4] [--rate 1000] [--seconds 5] [--json out.json]

One gateway (bench/_common.py's config: Cayenne LPP, the bundled model on every reading,
mqtt + file alert handlers) with ``[state] durable_ingest`` on, as the daemon runs: every
chunk goes through the ingest log (one fsync) before its PUBACKs leave, in both modes. Every
device is pre-warmed, so each measured reading is scored. Per drain, with the source
stopped, the load generator queues ``--backlog`` uplinks on the source's persistent
session; then the source starts (off: ``MqttSource`` in this process; on:
``ProcessMqttSource`` and its child) on the durable ingest's emitter, and the drain is timed
from the first reading to the last (``readings_total``).

CPU: this process's CPU time (all its threads) from the first reading to the end of the
drain, and for "on" the child's over the same span (``/proc/<pid>/stat`` utime + stime, so
the child's start-up is not counted), each divided by the readings; and two threads of the
gateway process alone (``/proc/self/task/<tid>/stat``): the pipeline thread, and the source's
thread (paho's network thread when off, the thread answering the child when on). The modes alternate (off, on, off, on...) so
the shared box's load hits both alike; compare within a run.

Latency (``--rate``, 0 to skip): per mode, alternating, the generator publishes at that rate
for ``--seconds`` to the running source; publish -> alert-policy decision per scored window
(bench/e2e_mqtt.py's timing wrapper), p50 / p99.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WARM_READINGS, Mosquitto, gateway_config, machine, make_gateway  # noqa: E402
from e2e_mqtt import Probe, loadgen, pct, wait_metric, warm_up  # noqa: E402


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(thread: Any) -> float:
    """User + system CPU seconds of one thread of this process (Linux /proc, clock ticks)."""
    if thread is None or thread.native_id is None:
        return 0.0
    try:
        fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def source_thread(source: Any) -> Any:
    """The gateway-process thread that takes the source's chunks: paho's network thread (off)
    or the thread answering the receive process (on)."""
    client = getattr(source, "_client", None)
    return getattr(client, "_thread", None) if client is not None else getattr(source, "_thread", None)


def make_source(gw: Any, mode: str, inflight: int) -> Any:
    from gateway.contracts import PluginContext
    from plugins.sources.mqtt.process import ProcessMqttSource
    from plugins.sources.mqtt.source import MqttSource

    base = gw.sources[0]
    options = base.options.model_copy(update={"receive_process": mode == "on", "receive_process_inflight": inflight})
    context = PluginContext(metrics=gw.metrics, gateway_id=gw.config.gateway.id)
    return (ProcessMqttSource if mode == "on" else MqttSource)(base.name, options, context)


def drain(gw: Any, source: Any, emit: Any, n: int) -> dict[str, Any]:
    m = gw.metrics
    r0 = m.get("readings_total")
    w0, b0 = m.get("windows_scored_total"), m.get("inference_batches_total")
    source.start(emit)
    pid = source.child_pid() if hasattr(source, "child_pid") else None
    while m.get("readings_total") == r0:
        time.sleep(0.001)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    threads = {"pipeline": gw.pipeline._thread, "source": source_thread(source)}
    thread0 = {k: thread_cpu_s(t) for k, t in threads.items()}
    child0 = proc_cpu_s(pid) if pid else 0.0  # the child's start-up (spawn, imports, connect) is not counted
    r_start = m.get("readings_total")
    while m.get("readings_total") < r0 + n:
        time.sleep(0.002)
    t1 = time.perf_counter()
    gw.pipeline.idle.wait(30)
    cpu = time.process_time() - cpu0
    spent = {k: thread_cpu_s(t) - thread0[k] for k, t in threads.items()}
    child = proc_cpu_s(pid) - child0 if pid else 0.0
    source.stop()
    readings = m.get("readings_total") - r_start
    windows = m.get("windows_scored_total") - w0
    return {"readings_per_s": readings / (t1 - t0), "windows_per_reading": windows / n,
            "mean_batch": windows / max(m.get("inference_batches_total") - b0, 1),
            "parent_cpu_us_per_reading": cpu / readings * 1e6, "child_cpu_us_per_reading": child / readings * 1e6,
            "total_cpu_us_per_reading": (cpu + child) / readings * 1e6,
            "pipeline_thread_cpu_us_per_reading": spent["pipeline"] / readings * 1e6,
            "source_thread_cpu_us_per_reading": spent["source"] / readings * 1e6, "load_average": os.getloadavg()[0]}


def latency(gw: Any, source: Any, emit: Any, probe: Any, port: int, devices: int, rate: float, seconds: float,
            fcnt: int) -> tuple[dict[str, float], int]:
    source.start(emit)
    try:
        if not source.wait_connected(30):
            raise RuntimeError("the source did not connect")
        r0 = gw.metrics.get("readings_total")
        probe.latencies = []
        probe.recording = True
        seconds = max(1, round(rate * seconds / devices)) * devices / rate
        gen = loadgen(port, devices, rate=rate, seconds=seconds, fcnt_start=fcnt)
        wait_metric(gw, "readings_total", r0 + gen["published"], timeout=120)
        gw.pipeline.idle.wait(10)
        probe.recording = False
    finally:
        source.stop()
    got = probe.latencies
    return ({"published_per_s": gen["rate"], "decisions_per_reading": len(got) / gen["published"],
             "p50_ms": pct(got, 50), "p99_ms": pct(got, 99)}, gen["published"] // devices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--backlog", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    lat_rows: list[dict[str, Any]] = []
    print(machine())
    rows: list[dict[str, Any]] = []
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-rxproc-") as tmp:
        config = gateway_config(broker.host, broker.port, Path(tmp) / "state")
        config["state"] = {"durable_ingest": True}
        gw = make_gateway(config)
        gw.start()
        try:
            gw.sources[0].stop()  # the bench starts its own source per drain, same options and client id
            emit = gw.durability.emitter(gw.sources[0], gw.sources[0].name)
            t = time.perf_counter()
            warm_up(gw, args.devices, WARM_READINGS)
            print(f"warm-up: {args.devices} devices x {WARM_READINGS} readings in {time.perf_counter() - t:.1f} s")
            fcnt = WARM_READINGS
            backlog = -(-args.backlog // args.devices) * args.devices
            for rep in range(args.repeat):
                for mode in ("off", "on"):
                    gen = loadgen(broker.port, args.devices, count=backlog, fcnt_start=fcnt)
                    fcnt += backlog // args.devices
                    row = {"mode": mode, "repeat": rep + 1, **drain(gw, make_source(gw, mode, args.inflight), emit, backlog)}
                    if gen["acked"] < gen["published"]:
                        row["generator_unacked"] = gen["published"] - gen["acked"]
                    rows.append(row)
                    print(f"#{rep + 1} receive_process {mode:>3}: {row['readings_per_s']:7.0f} readings/s, "
                          f"CPU/reading: gateway {row['parent_cpu_us_per_reading']:5.1f} us + receive process "
                          f"{row['child_cpu_us_per_reading']:5.1f} us = {row['total_cpu_us_per_reading']:5.1f} us "
                          f"(gateway's pipeline thread {row['pipeline_thread_cpu_us_per_reading']:5.1f}, source thread "
                          f"{row['source_thread_cpu_us_per_reading']:5.1f}); "
                          f"mean batch {row['mean_batch']:.1f}, {row['windows_per_reading']:.3f} windows/reading, "
                          f"load {row['load_average']:.2f}", flush=True)
            probe = Probe(gw.pipeline)
            for rep in range(args.repeat if args.rate > 0 else 0):
                for mode in ("off", "on"):
                    row, rounds = latency(gw, make_source(gw, mode, args.inflight), emit, probe, broker.port, args.devices,
                                          args.rate, args.seconds, fcnt)
                    fcnt += rounds
                    lat_rows.append({"mode": mode, "repeat": rep + 1, **row})
                    print(f"#{rep + 1} receive_process {mode:>3} at {row['published_per_s']:.0f}/s: publish -> decision "
                          f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms "
                          f"({row['decisions_per_reading']:.3f} decisions/reading)", flush=True)
            counters = {k: v for k, v in gw.metrics.snapshot().items()
                        if "dropped" in k or "rejected" in k or "duplicate" in k or "receive_process" in k}
            print("counters:", json.dumps(counters))
        finally:
            gw.stop()
    print("\n| receive_process | readings/s (median) | gateway µs CPU/reading | of it: pipeline thread | of it: source thread "
          "| receive process µs CPU/reading | total µs CPU/reading |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    med: dict[str, float] = {}
    for mode in ("off", "on"):
        mine = [r for r in rows if r["mode"] == mode]
        med[mode] = statistics.median(r["readings_per_s"] for r in mine)
        print(f"| {mode} | {med[mode]:.0f} | {statistics.median(r['parent_cpu_us_per_reading'] for r in mine):.1f} | "
              f"{statistics.median(r['pipeline_thread_cpu_us_per_reading'] for r in mine):.1f} | "
              f"{statistics.median(r['source_thread_cpu_us_per_reading'] for r in mine):.1f} | "
              f"{statistics.median(r['child_cpu_us_per_reading'] for r in mine):.1f} | "
              f"{statistics.median(r['total_cpu_us_per_reading'] for r in mine):.1f} |")
    print(f"on / off (median readings/s): {med['on'] / med['off']:.2f}")
    for mode in ("off", "on") if lat_rows else ():
        mine = [r for r in lat_rows if r["mode"] == mode]
        print(f"latency at {args.rate:.0f}/s, receive_process {mode}: p50 {statistics.median(r['p50_ms'] for r in mine):.1f} ms, "
              f"p99 {statistics.median(r['p99_ms'] for r in mine):.1f} ms (medians of {len(mine)} runs)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "latency": lat_rows}, indent=2))


if __name__ == "__main__":
    main()

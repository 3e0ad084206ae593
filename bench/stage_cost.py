"""CPU microseconds per reading, per stage, in one run (issue 15: before and after the
columnar core; run it in the old tree and this one, alternating, for the ratio).

    .venv/bin/python bench/stage_cost.py [--devices 1000] [--readings 20000] [--receive-count 20000]

The pipeline is driven the way the daemon drives it: in chunks of ``--chunk`` uplinks
(``Pipeline._handle_chunk``, what a committed ingest-log chunk becomes) where the tree has
the chunk path, else one uplink at a time (``Pipeline._handle``, the tree before issue 15).

Stages and how each is measured (CPU time of the thread doing it: ``time.thread_time_ns``,
so a shared box's descheduling does not count; the timer's own cost, measured in the same
run, is subtracted per call):

* receive: the mqtt source's batched paho client draining a backlog from a private
  Mosquitto into a counter (bench/mqtt_receive.py's ``paho`` mode): process CPU per message;
* parse: ``plugins.sources.mqtt.shapes.parse_uplink`` per ChirpStack v4 body (what the source
  does on its thread);
* accept: the durable ingest step the source's emitter runs per received chunk (duplicate
  check, ingest log append, one fsync per chunk; ``gateway.ingest.accept``);
* decode, window, score (engine.observe + engine.score: calibration, standardise, ONNX
  Runtime, scoring; the ONNX Runtime share from the engine's own counter), policy
  (on_reading + on_score), observers (telemetry fan-out, recorder if on), outbox (alerts
  appended; none on this normal data, so the cost per alert is timed alone too): the
  pipeline driven from this thread on pre-warmed devices (a window scored per reading), each
  stage's method wrapped with a timer; "loop glue" is the pipeline's time outside them;
* other threads: the process's CPU minus this thread's over the pipeline phase (telemetry,
  dispatcher, handler threads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

clock = time.thread_time_ns


def timer_cost_ns(n: int = 200_000) -> float:
    t0 = clock()
    for _ in range(n):
        clock()
    return (clock() - t0) / n


class Stages:
    def __init__(self) -> None:
        self.ns: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        ns, calls = self.ns, self.calls
        ns.setdefault(stage, 0)
        calls.setdefault(stage, 0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                ns[stage] += clock() - t
                calls[stage] += 1
        return timed


def receive_cpu(broker: Mosquitto, count: int, devices: int) -> float:
    from e2e_mqtt import loadgen, use_receive_client
    from mqtt_receive import drain

    from gateway.contracts import PluginContext
    from gateway.metrics import Metrics
    from plugins.sources.mqtt.source import MqttSource, MqttSourceOptions, TopicOptions

    ctx = PluginContext(metrics=Metrics(), gateway_id="bench", state_dir="/tmp")
    opts = MqttSourceOptions(host=broker.host, port=broker.port, client_id="bench-stage-receive",
                             topics=[TopicOptions(topic="application/+/device/+/event/up", shape="chirpstack_v4")])
    src = MqttSource("bench", opts, ctx)  # register the persistent session
    src.start(lambda _: None)
    src.wait_connected(10)
    time.sleep(0.3)
    src.stop()
    use_receive_client("batched")
    loadgen(broker.port, devices, count=count)
    row = drain(opts, ctx, "paho", count)
    return float(row["cpu_us_per_msg"])


def accept_cpu(ups: list[Any], directory: Path, chunk: int) -> float:
    """The durable ingest step (``[state] durable_ingest``, on by default): what the MQTT
    source's emitter does per received chunk before the pipeline sees it. This thread's CPU
    per uplink (the fsync's wait is not CPU)."""
    from gateway.ingest.accept import IngestAcceptor
    from gateway.ingest.log import IngestLog
    from gateway.metrics import Metrics

    metrics = Metrics()
    acceptor = IngestAcceptor(IngestLog(directory, metrics), lambda _up: None, metrics)
    emit = acceptor.emitter("bench")
    t0 = clock()
    for start in range(0, len(ups), chunk):
        for up in ups[start:start + chunk]:
            emit(up)
        emit.commit()
    spent = clock() - t0
    acceptor.close()
    return spent / len(ups) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--readings", type=int, default=20000)
    ap.add_argument("--receive-count", type=int, default=20000)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64, help="uplinks per ingest-log write (a received chunk)")
    ap.add_argument("--defer-level-steps", choices=("on", "off", "default"), default="default",
                    help="level steps once per batch (on) or per reading (off); default: the tree's own")
    args = ap.parse_args()
    from gateway.types import Alert
    from plugins.sources.mqtt.shapes import parse_uplink

    print(machine())
    print(f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tick = timer_cost_ns()
    payloads = payload_variants()
    rows: dict[str, float] = {}
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        rows["receive (batched paho client, process CPU)"] = receive_cpu(broker, args.receive_count, args.devices)
        gw = make_gateway(gateway_config(broker.host, broker.port, Path(tmp) / "state", max_batch=args.max_batch))
        gw.start()
        p = gw.pipeline
        p.stop()  # drive it from this thread
        if args.defer_level_steps != "default" and hasattr(p, "defer_level_steps"):
            p.defer_level_steps = args.defer_level_steps == "on"
        print(f"defer_level_steps: {getattr(p, 'defer_level_steps', 'n/a')}")
        try:
            rounds = WARM_READINGS + -(-args.readings // args.devices)
            t_start = time.time() - rounds
            bodies = [(TOPIC.format(eui=dev_eui(d)), uplink_body(dev_eui(d), t_start + k, k, payloads[payload_index(d, k)]))
                      for k in range(rounds) for d in range(args.devices)]
            n_warm = WARM_READINGS * args.devices
            for topic, body in bodies[:n_warm]:
                p._handle(parse_uplink(topic, body, "chirpstack_v4"))
            p._flush()
            live = bodies[n_warm:]
            n = len(live)
            t0 = clock()
            ups = [parse_uplink(topic, body, "chirpstack_v4") for topic, body in live]
            rows["parse (ChirpStack v4 JSON -> RawUplink)"] = (clock() - t0) / n / 1e3
            rows[f"accept (duplicate check + ingest log, one write and fsync per {args.chunk} uplinks)"] = \
                accept_cpu(ups, Path(tmp) / "accept", args.chunk)

            st = Stages()
            chunked = hasattr(p, "_handle_chunk")
            if not chunked:
                p.decoder.decode = st.wrap("decode", p.decoder.decode)
            p.windows.add = st.wrap("window", p.windows.add)
            p.engine.observe = st.wrap("score", p.engine.observe)
            p.policy.on_reading = st.wrap("policy", p.policy.on_reading)
            if chunked:
                import gateway.pipeline.loop as loop_module
                p.decoder.decode_chunk = st.wrap("decode", p.decoder.decode_chunk)
                p.engine.score_groups = st.wrap("score", p.engine.score_groups)
                loop_module.on_scores = st.wrap("policy", loop_module.on_scores)  # type: ignore[attr-defined]
            else:
                p.engine.score = st.wrap("score", p.engine.score)
                p.policy.on_score = st.wrap("policy", p.policy.on_score)
            for obs in p.observers:
                obs.observe_reading = st.wrap("observers", obs.observe_reading)
            gw.outbox.append = st.wrap("outbox", gw.outbox.append)
            m = gw.metrics
            w0, s0 = m.get("windows_scored_total"), m.get("inference_seconds_total")
            cpu0, t0 = time.process_time_ns(), clock()
            if chunked:
                for start in range(0, len(ups), args.chunk):
                    p._handle_chunk(ups[start:start + args.chunk], time.monotonic())
            else:
                for up in ups:
                    p._handle(up)
            p._flush()
            t_pipe, cpu_proc = clock() - t0, time.process_time_ns() - cpu0
            windows = m.get("windows_scored_total") - w0
            onnx_us = (m.get("inference_seconds_total") - s0) / n * 1e6
            staged = 0.0
            for stage in ("decode", "window", "score", "policy", "observers", "outbox"):
                us = max(0.0, (st.ns[stage] - st.calls[stage] * tick) / n / 1e3)
                staged += us
                label = stage + (f" (of which ONNX Runtime {onnx_us:.1f}, wall)" if stage == "score" else "")
                label += f" [{st.calls[stage] / n:.2f} calls/reading]"
                rows[label] = us
            timer_us = sum(st.calls.values()) * tick / n / 1e3  # the wrappers' own clock reads
            rows["loop glue (pipeline time outside the stages)"] = max(0.0, t_pipe / n / 1e3 - staged - timer_us)
            rows["other threads (process CPU - pipeline thread)"] = max(0.0, (cpu_proc - t_pipe) / n / 1e3)
            # the outbox per alert, timed alone (the normal data raises none)
            k = 2000
            alerts = [Alert(device_id=dev_eui(i % args.devices), kind="anomaly", state="raised", severity="warning",
                            timestamp=time.time(), message="bench", key=f"bench-{i}", score=1.5) for i in range(k)]
            t0 = clock()
            for a in alerts:
                gw.outbox.append(a)
            per_alert = (clock() - t0 - k * tick) / k / 1e3
        finally:
            gw.stop()
    print(f"{n} readings, {args.devices} devices, {windows / n:.3f} windows scored per reading, "
          f"max_batch {args.max_batch}, {'chunks of ' + str(args.chunk) if chunked else 'one uplink at a time'}; "
          f"timer cost {tick:.0f} ns per call (subtracted)")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| stage | CPU µs per reading |\n| --- | ---: |")
    for label, us in rows.items():
        print(f"| {label} | {us:.1f} |")
    print(f"| total (receive + parse + accept + pipeline + other threads) | {sum(rows.values()):.1f} |")
    print(f"outbox append per alert, timed alone: {per_alert:.1f} µs CPU (this thread; SQLite fsync waits are not CPU)")


if __name__ == "__main__":
    main()

"""What durability costs: the ingest log and checkpoints per reading (as a ratio to the
pipeline without them), and the restart time with 10,000 calibrated devices.

    .venv/bin/python bench/durable_cost.py [--devices 1000] [--readings 40000] [--chunk 200]
                                           [--restart-devices 10000]

1. Per reading, on pre-warmed devices (every reading scored), one thread: alternating
   groups of chunks (off, on, on, off: a linear drift cancels) of ``--chunk`` uplinks, the
   size of one received MQTT chunk. "off" hands each uplink to the pipeline; "on" goes
   through the acceptor as the MQTT source does: duplicate check, held, then one log append
   + fsync per chunk, then the pipeline. Printed with fsync and without (the disk's share).
   Checkpoints: the pipeline-thread part (copying every device, all dirty) and the writer's
   encoding + SQLite commit, timed alone, then spread over the readings of one interval at
   1,000 readings/s and the default 60 s interval.
2. Restart: a state dir with a checkpoint of ``--restart-devices`` calibrated devices (one
   calibrated device's state under that many ids: the restore cost is per record, whatever
   the values); times ``Gateway.start()`` (model load included) and its restore part,
   beside a start with an empty state dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def per_reading(args: argparse.Namespace, fsync: bool) -> None:
    from plugins.sources.mqtt.shapes import parse_uplink

    payloads = payload_variants()
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-durable-") as tmp:
        config = gateway_config(broker.host, broker.port, Path(tmp) / "state")
        config["state"] = {"fsync": fsync, "checkpoint_interval_s": 0}
        gw = make_gateway(config)
        gw.start()
        for s in gw.sources:
            s.stop()
        p = gw.pipeline
        p.stop()  # drive it from this thread
        acceptor = gw.durability.acceptor
        acceptor.deliver = p._handle  # what the pipeline thread would do with each logged uplink
        emit = acceptor.emitter("bench", redelivers=True)
        try:
            rounds = WARM_READINGS + -(-args.readings // args.devices)
            t_start = time.time() - rounds
            ups = [parse_uplink(TOPIC.format(eui=dev_eui(d)), uplink_body(dev_eui(d), t_start + k, k, payloads[payload_index(d, k)]),
                                "chirpstack_v4") for k in range(rounds) for d in range(args.devices)]
            n_warm = WARM_READINGS * args.devices
            for up in ups[:n_warm]:
                p._handle(up)
            p._flush()
            live = ups[n_warm:]
            groups: list[list[float]] = []
            tot = {"off": [0.0, 0], "on": [0.0, 0]}
            for i, start in enumerate(range(0, len(live), args.chunk)):
                part = live[start:start + args.chunk]
                on = i % 4 in (1, 2)
                t0 = time.perf_counter()
                if on:
                    for up in part:
                        emit(up)
                    emit.commit()
                else:
                    for up in part:
                        p._handle(up)
                p._flush()
                dt = time.perf_counter() - t0
                key = "on" if on else "off"
                tot[key][0] += dt
                tot[key][1] += len(part)
                if i % 4 == 0:
                    groups.append([0.0, 0.0])
                groups[-1][1 if on else 0] += dt / len(part)
            ratios = [b / a for a, b in groups if a and b]
            off = tot["off"][0] / tot["off"][1] * 1e6
            on_ = tot["on"][0] / tot["on"][1] * 1e6
            print(f"fsync {'on ' if fsync else 'off'}: pipeline {off:6.1f} us/reading; with ingest log {on_:6.1f} us/reading "
                  f"(ratio {on_ / off:.3f}; per group median {statistics.median(ratios):.3f}, "
                  f"range {min(ratios):.3f}-{max(ratios):.3f}); chunks of {args.chunk}, "
                  f"{gw.metrics.get('ingest_log_syncs_total'):.0f} log writes")
            if fsync:
                cp = gw.durability.checkpointer
                for d in range(args.devices):
                    cp.mark(dev_eui(d))
                t0 = time.perf_counter()
                cp.capture(p.handled_seq, wait=False)
                t_dump = time.perf_counter() - t0
                cp._queue.join()
                t_total = time.perf_counter() - t0
                per = t_dump / (1000 * 60) * 1e6
                print(f"checkpoint of {args.devices} devices (all changed): {t_dump * 1e3:.1f} ms on the pipeline thread (copy), "
                      f"{(t_total - t_dump) * 1e3:.1f} ms encoding + SQLite commit on the writer thread; at 1,000 readings/s and "
                      f"a 60 s interval: {per:.3f} us/reading on the pipeline thread ({per / off:.4f} of it)")
        finally:
            gw.stop()


def restart(args: argparse.Namespace) -> None:
    from gateway.state.checkpoint import CheckpointStore
    from gateway.state.tree import pack, unpack
    from plugins.sources.mqtt.shapes import parse_uplink

    payloads = payload_variants()
    n = args.restart_devices
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        state = Path(tmp) / "state"
        config = gateway_config("127.0.0.1", 1, state, max_devices=n)
        config["sources"] = []
        config["state"] = {"checkpoint_interval_s": 0}
        # one calibrated device, its state written under n ids
        gw = make_gateway(config)
        gw.start()
        p = gw.pipeline
        p.stop()
        t_start = time.time() - WARM_READINGS - 10
        for k in range(WARM_READINGS + 2):
            p._handle(parse_uplink(TOPIC.format(eui=dev_eui(0)), uplink_body(dev_eui(0), t_start + k, k, payloads[0]), "chirpstack_v4"))
        p._flush()
        codec = gw.durability.codec
        key = codec.model_key()
        tree = codec.device_tree(dev_eui(0), key)
        assert tree is not None and tree["engine"]["score"].calibrated
        blob = pack(tree)
        classes = gw.pipeline.policy.state_classes() | gw.pipeline.engine.state_classes()
        rows = {}
        for d in range(n):
            t = unpack(blob, classes)
            t["id"] = dev_eui(d)
            rows[dev_eui(d)] = (t_start + d, pack(t))
        gw.stop()
        store = CheckpointStore(state / "checkpoint.sqlite", gw.metrics)
        store.write(10**9, key, codec.model_ref(), rows, set())
        store.close()
        print(f"checkpoint: {n} calibrated devices, {os.path.getsize(state / 'checkpoint.sqlite') / 1e6:.1f} MB "
              f"({len(blob)} bytes per device)")
        timings = []
        for label, state_dir in (("empty state dir", Path(tmp) / "empty"), (f"{n} devices", state)):
            cfg = dict(config)
            cfg["gateway"] = {**config["gateway"], "state_dir": str(state_dir)}
            g = make_gateway(cfg)
            t0 = time.perf_counter()
            g.start()
            t_start_s = time.perf_counter() - t0
            restored = g.metrics.get("checkpoint_restored_devices")
            restore_s = g.metrics.get("checkpoint_restore_seconds")
            g.stop()
            timings.append(t_start_s)
            print(f"start with {label:18s}: {t_start_s:.2f} s to ready (restore {restore_s:.2f} s, "
                  f"{restored:.0f} devices restored)")
        print(f"restart cost of the state: {timings[1] - timings[0]:.2f} s (target < 5 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--readings", type=int, default=40000)
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--restart-devices", type=int, default=10000)
    args = ap.parse_args()
    print(machine())
    per_reading(args, fsync=True)
    per_reading(args, fsync=False)
    restart(args)


if __name__ == "__main__":
    main()

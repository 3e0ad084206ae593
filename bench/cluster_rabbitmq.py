"""A gateway cluster behind RabbitMQ: aggregate throughput with 1, 2, 3 workers, and the
partition handoff time as a function of devices per partition.

Starts its own RabbitMQ node (``tests.rabbitmq_node``: Debian's rabbitmq-server on
loopback, private node name and data dir) and real ``lora-gateway run`` workers.

1. Throughput: for n = 1, 2, 3 workers on a fresh 12-partition topology, a backlog of
   ``--devices`` x ``--readings`` ChirpStack uplinks is published (publisher confirms) once
   the workers have split the partitions; the figure is uplinks / (time from the first
   reading to the last), summed over the workers, and its ratio to one worker. Every
   worker runs with the defaults of a clustered gateway (ingest log with fsync per chunk,
   a partition snapshot + ack every 200 uplinks or 1 s).
2. Handoff: one partition holding D devices (each calibrated: ``--handoff-readings``
   readings); worker A owns it, worker B idles beside it; A gets SIGTERM and releases the
   partition (final snapshot), B takes it over on the next uplink. Printed per D: the
   final snapshot's bytes, A's ``releasing`` log time to B's ``installed`` log time (leave
   message, subscribe, first delivery, snapshot fetch, restore on B's pipeline thread),
   and the restore alone.

    .venv/bin/python bench/cluster_rabbitmq.py                 # both, about 3 minutes here
    .venv/bin/python bench/cluster_rabbitmq.py --only throughput --devices 400 --readings 60

Figures, not a test: compare within one run (the box's 2 cores are shared, and 3 workers
plus the broker on 2 cores cannot scale like 3 machines).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import machine  # noqa: E402  (after the path insert)
from tests.conftest import free_port  # noqa: E402
from tests.gateway_process import GatewayProcess, to_toml  # noqa: E402
from tests.rabbitmq_node import RabbitNode, publish_confirmed  # noqa: E402
from tests.uplink_factory import chirpstack_v4, dev_eui, lpp  # noqa: E402

BASE_TS = 1_760_000_000.0


def uplinks(devices: int, readings: int, first_index: int = 0) -> list[tuple[str, dict]]:
    out = []
    for k in range(first_index, first_index + readings):
        ts = BASE_TS + k * 600.0
        for d in range(devices):
            eui = dev_eui(d)
            temp = 18 + (k % 37) * 0.1 + (d % 7) * 0.3
            out.append((f"application/app-1/device/{eui}/event/up", chirpstack_v4(eui, ts, k, lpp(temp, 60.0 + (k % 11)))))
    return out


def worker(tmp: Path, node: RabbitNode, name: str, prefix: str, partitions: int, **source: Any) -> GatewayProcess:
    port = free_port()
    data = {
        "gateway": {"id": name, "state_dir": str(tmp / name), "max_devices": 20000},
        "sources": [{"type": "rabbitmq", "name": "ns", "host": node.host, "port": node.port, "worker_id": name,
                     "prefix": prefix, "partitions": partitions, "settle_s": 1.0, **source}],
        "handlers": [{"type": "log"}],
        "profiles": [{"name": "lpp", "match_name": "node-*", "codec": "cayenne_lpp", "battery_field": "voltage_3"}],
        "model": {"calibration_steps": 32, "calibration_windows": 32},
        "alerts": {"silent_min_s": 1e9},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }
    cfg = tmp / f"{name}.toml"
    cfg.write_text(to_toml(data))
    return GatewayProcess(cfg, port, tmp / f"{name}.log")


def init(node: RabbitNode, prefix: str, partitions: int) -> None:
    import subprocess

    exe = str(Path(sys.executable).with_name("lora-gateway"))
    subprocess.run([exe, "cluster", "init", "--host", node.host, "--port", str(node.port), "--prefix", prefix,
                    "--partitions", str(partitions)], check=True, capture_output=True)


def wait_for(cond: Any, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False


def assigned(gw: GatewayProcess) -> list[int]:
    h = gw.health()
    return [] if h is None else h[1].get("cluster", {}).get("ns", {}).get("partitions_assigned", [])


def throughput(node: RabbitNode, tmp: Path, devices: int, readings: int) -> None:
    backlog = uplinks(devices, readings)
    rates: dict[int, float] = {}
    for n in (1, 2, 3):
        prefix = f"t{n}"
        init(node, prefix, 12)
        (tmp / prefix).mkdir()
        gws = [worker(tmp / prefix, node, f"{prefix}w{i}", prefix, 12) for i in range(n)]
        try:
            ok = wait_for(lambda gws=gws: sorted(p for g in gws for p in assigned(g)) == list(range(12))
                          and max(len(assigned(g)) for g in gws) - min(len(assigned(g)) for g in gws) <= 1, 90)
            assert ok, [assigned(g) for g in gws]
            publish_confirmed(node.host, node.port, backlog)
            first = None
            while True:
                total = sum(max(0.0, g.metric("readings_total")) for g in gws)
                now = time.monotonic()
                if first is None and total > 0:
                    first, first_total = now, total
                if total >= len(backlog):
                    break
                time.sleep(0.05)
            assert first is not None
            rates[n] = (len(backlog) - first_total) / (now - first)
            print(f"  {n} worker(s): {rates[n]:8.0f} uplinks/s aggregate ({len(backlog)} uplinks, "
                  f"{devices} devices)   x{rates[n] / rates[1]:.2f} of one worker", flush=True)
        finally:
            for g in gws:
                g.signal(signal.SIGTERM)
            for g in gws:
                try:
                    g.wait(30)
                finally:
                    g.close()


_TIME = r"^(\S+ \S+) "


def _log_times(text: str, pattern: str) -> list[tuple[float, re.Match[str]]]:
    out = []
    for line in text.splitlines():
        m = re.search(pattern, line)
        if m:
            t = re.match(_TIME, line)
            assert t is not None
            out.append((datetime.strptime(t[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), m))
    return out


def _log_time(text: str, pattern: str) -> tuple[float, re.Match[str]] | None:
    found = _log_times(text, pattern)
    return found[0] if found else None


def handoff(node: RabbitNode, tmp: Path, sizes: list[int], readings: int) -> None:
    for d in sizes:
        prefix = f"h{d}"
        init(node, prefix, 1)
        (tmp / prefix).mkdir()
        a = worker(tmp / prefix, node, f"{prefix}a", prefix, 1)
        b: GatewayProcess | None = None
        try:
            assert wait_for(lambda a=a: assigned(a) == [0], 90), a.log()[-2000:]
            publish_confirmed(node.host, node.port, uplinks(d, readings))
            assert wait_for(lambda a=a, d=d: a.metric("readings_total") >= d * readings, 600)
            b = new = worker(tmp / prefix, node, f"{prefix}b", prefix, 1)
            assert wait_for(lambda new=new: (h := new.health()) is not None and h[1]["cluster"]["ns"]["members"] == 2, 90)
            a.signal(signal.SIGTERM)
            a.wait(60)
            publish_confirmed(node.host, node.port, uplinks(d, 1, first_index=readings))
            assert wait_for(lambda new=new: "partition 0 acquired" in new.log(), 120), new.log()[-2000:]
            released = _log_time(a.log(), r"partition 0 releasing")
            acquired = _log_time(new.log(), r"acquired \((\d+) snapshots .* (\d+) devices, (\d+) bytes\)")
            assert released and acquired
            assert wait_for(lambda new=new: "handed-over state installed" in new.log(), 120), new.log()[-2000:]
            installed = _log_time(new.log(), r"handed-over state installed in ([\d.]+) s")
            assert installed is not None
            print(f"  {d:6d} devices/partition: {acquired[1][1]:>2} snapshots read ({int(acquired[1][3]) / 1e6:6.2f} MB), "
                  f"release -> installed {installed[0] - released[0]:6.2f} s "
                  f"(of which the install on the pipeline thread {float(installed[1][1]):.3f} s)", flush=True)
        finally:
            for g in (a, b):
                if g is not None:
                    g.signal(signal.SIGTERM)
                    try:
                        g.wait(30)
                    finally:
                        g.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["throughput", "handoff"])
    ap.add_argument("--devices", type=int, default=400)
    ap.add_argument("--readings", type=int, default=50)
    ap.add_argument("--handoff-sizes", default="100,400,1600")
    ap.add_argument("--handoff-readings", type=int, default=70)
    args = ap.parse_args()
    print(machine())
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    node = RabbitNode(tmp / "rabbitmq")
    started = time.monotonic()
    node.start()
    print(f"rabbitmq node up in {time.monotonic() - started:.1f} s")
    try:
        if args.only in (None, "throughput"):
            print("aggregate throughput (12 partitions):")
            throughput(node, tmp, args.devices, args.readings)
        if args.only in (None, "handoff"):
            print("handoff time vs devices per partition (clean release; a SIGKILL adds member_timeout_s):")
            handoff(node, tmp, [int(x) for x in args.handoff_sizes.split(",")], args.handoff_readings)
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

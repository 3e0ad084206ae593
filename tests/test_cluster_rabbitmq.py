"""A gateway cluster behind RabbitMQ survives a worker's SIGKILL without losing or
re-learning anything.

One private RabbitMQ node (``tests.rabbitmq_node``: Debian's rabbitmq-server on loopback,
its own node name, ports and data dir). Two topologies on the same ``amq.topic`` feed, so
one confirm-mode publisher (ChirpStack's AMQP integration, 500 devices) feeds both:

- ``ref``: one ``lora-gateway run`` worker, never disturbed: the single-gateway run;
- ``clu``: three ``lora-gateway run`` workers; one is SIGKILLed mid-stream. Once what was
  published before (the first ``PHASE2_AT`` of ``STEPS`` time steps) is processed, a fourth
  worker joins (scale out: partitions move to it by clean handoffs, state included) and
  the rest of the stream is published.

Checked on the cluster: every confirmed uplink is processed (in some worker's recording)
and no device has a (DevEUI, fCnt) gap; each partition had one owner at a time (the
workers' acquire/release log lines, the killed one's ending at the kill); the dead
worker's partitions were taken over within ``FAILOVER_BOUND_S``; the alert stream (what
the handlers got, plus what the dead worker had accepted in its outbox) has the same
idempotency keys, with the same content, as the single-gateway run's.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, free_port
from tests.gateway_process import GatewayProcess, to_toml
from tests.rabbitmq_node import RabbitNode, publish_confirmed
from tests.uplink_factory import chirpstack_v4, dev_eui, lpp

pytestmark = pytest.mark.slow

DEVICES = 500
LONG = 6  # devices reporting all STEPS (calibrated, two with a sustained fault)
STEPS = 700
SHORT_READINGS = 30  # the other devices: a stretch of readings each, some with a flat battery
FAULTY = {1: (440, 560), 4: (470, 600)}
BASE_TS = 1_760_000_000.0
INTERVAL_S = 600.0
FAILOVER_BOUND_S = 20.0  # member_timeout_s (2 s) + settle + a loaded box; measured values are printed
KILL_AT = 0.5  # fraction of the uplinks the cluster has processed when a worker is killed
PHASE2_AT = 560  # time step from which the uplinks are published after a fourth worker joined


def contiguous_runs(values: list[int]) -> list[list[int]]:
    """``values`` (sorted) split where a value is not its predecessor + 1."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


def cluster_uplinks() -> tuple[list[tuple[str, dict]], int]:
    """The input, in time order: (topic, ChirpStack v4 body), and where ``PHASE2_AT`` starts
    in it; deterministic (seeded)."""
    import math

    import numpy as np

    rng = np.random.default_rng(13)
    noise = rng.normal(0, 1, (STEPS, DEVICES, 2))
    phase = rng.uniform(0, 2 * math.pi, DEVICES)
    first = {d: (0 if d < LONG else int(rng.integers(0, STEPS - SHORT_READINGS))) for d in range(DEVICES)}
    out = []
    split = 0
    for k in range(STEPS):
        if k == PHASE2_AT:
            split = len(out)
        ts = BASE_TS + k * INTERVAL_S
        for d in range(DEVICES):
            i = k - first[d]
            if i < 0 or (d >= LONG and i >= SHORT_READINGS):
                continue
            day = 2 * math.pi * (ts % 86400) / 86400 + phase[d]
            temp = 18 + 4 * math.sin(day) + 0.25 * noise[k, d, 0]
            hum = 65 - 8 * math.sin(day) + 1.0 * noise[k, d, 1]
            lo, hi = FAULTY.get(d, (0, 0))
            if lo <= k < hi:
                temp += 14.0
            battery = 2.7 if (d % 50 == 7 and 10 <= i < 20) else 3.6  # battery_low raised, then cleared
            eui = dev_eui(d)
            out.append((f"application/app-1/device/{eui}/event/up", chirpstack_v4(eui, ts, i, lpp(temp, hum, battery))))
    return out, split


def worker_config(tmp: Path, node: RabbitNode, name: str, prefix: str, partitions: int) -> tuple[Path, int]:
    port = free_port()
    data: dict[str, Any] = {
        "gateway": {"id": name, "state_dir": str(tmp / name), "drain_timeout_s": 5.0},
        "sources": [{"type": "rabbitmq", "name": "chirpstack", "host": node.host, "port": node.port,
                     "worker_id": name, "prefix": prefix, "partitions": partitions, "prefetch": 300,
                     "checkpoint_every": 100, "checkpoint_interval_s": 0.5, "member_heartbeat_s": 0.3,
                     "member_timeout_s": 2.0, "settle_s": 1.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}],
        "handlers": [{"type": "file", "path": str(tmp / name / "alerts.jsonl")}],
        "profiles": [{"name": "lpp-nodes", "match_name": "node-*", "codec": "cayenne_lpp", "battery_field": "voltage_3"}],
        "model": {"calibration_steps": 160, "calibration_windows": 160},
        "batcher": {"max_batch": 64, "max_delay_ms": 5.0},
        # device_silent follows the wall clock, which differs between runs: out of this comparison
        "alerts": {"raise_threshold": 1.5, "clear_threshold": 0.8, "silent_min_s": 1e9},
        "record": {"enabled": True, "flush_interval_s": 0.2},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }
    path = tmp / f"{name}.toml"
    path.write_text(to_toml(data))
    return path, port


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("lora-gateway"))
    return subprocess.run([exe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def wait_for(cond, timeout: float, every: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())


def recorded(state_dir: Path) -> list[tuple[str, int]]:
    """(device, fCnt) of every reading a worker recorded, in file order."""
    from models.recordings import ReadStats, read_lines, recording_paths

    stats = ReadStats()
    out = []
    for path in recording_paths(state_dir / "recordings"):
        for r in read_lines(path, stats):
            out.append((r.device_id, int(r.f_cnt)))
    return out


def alerts_of(state_dir: Path) -> list[dict]:
    """What the worker's file handler delivered plus what its outbox still holds."""
    out = []
    path = state_dir / "alerts.jsonl"
    if path.exists():
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    db = state_dir / "outbox.sqlite"
    if db.exists():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT payload FROM entries WHERE priority = 0").fetchall()
        conn.close()
        out += [json.loads(p) for (p,) in rows]
    return out


_EVENT = re.compile(r"^(\S+ \S+) .*partition (\d+) (acquired|releasing)")


def ownership(log_text: str) -> list[tuple[float, int, str]]:
    events = []
    for line in log_text.splitlines():
        m = _EVENT.match(line)
        if m:
            t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((t, int(m[2]), m[3]))
    return events


def queues_drained(node: RabbitNode, prefix: str, partitions: int) -> bool:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters(node.host, node.port))
    try:
        ch = conn.channel()
        return all(ch.queue_declare(f"{prefix}.p{p:03d}", passive=True).method.message_count == 0
                   for p in range(partitions))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    node = RabbitNode(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


def test_cluster_init_is_idempotent_and_refuses_a_smaller_partition_count(rabbit: RabbitNode) -> None:
    args = ["cluster", "init", "--host", rabbit.host, "--port", str(rabbit.port), "--prefix", "idem"]
    first = cli(*args, "--partitions", "6")
    assert first.returncode == 0, first.stderr
    again = cli(*args, "--partitions", "6")
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    # one binding per queue however often init ran: 600 keys spread over 6 queues, each once
    uplinks = [(f"application/app-1/device/{dev_eui(d)}/event/up", b"{}") for d in range(600)]
    assert len(publish_confirmed(rabbit.host, rabbit.port, uplinks)) == 600
    status = cli("cluster", "status", "--host", rabbit.host, "--port", str(rabbit.port), "--prefix", "idem",
                 "--partitions", "6")
    assert status.returncode == 0, status.stderr
    ready = [int(line.split()[1]) for line in status.stdout.splitlines()[1:]]
    assert sum(ready) == 600 and all(r > 0 for r in ready), status.stdout
    smaller = cli(*args, "--partitions", "4")
    assert smaller.returncode == 1 and "idem.p004 exists" in smaller.stderr, smaller.stderr


def test_three_workers_lose_nothing_when_one_is_killed_and_alert_like_one_gateway(rabbit: RabbitNode, tmp_path: Path) -> None:
    uplinks, split = cluster_uplinks()
    total = len(uplinks)
    for prefix, parts in (("ref", 4), ("clu", 12)):
        done = cli("cluster", "init", "--host", rabbit.host, "--port", str(rabbit.port), "--prefix", prefix,
                   "--partitions", str(parts))
        assert done.returncode == 0, done.stderr
    procs: dict[str, GatewayProcess] = {}
    try:
        cfg, port = worker_config(tmp_path, rabbit, "ref", "ref", 4)
        procs["ref"] = GatewayProcess(cfg, port, tmp_path / "ref.log")
        names = ["w1", "w2", "w3"]
        for name in names:
            cfg, port = worker_config(tmp_path, rabbit, name, "clu", 12)
            procs[name] = GatewayProcess(cfg, port, tmp_path / f"{name}.log")
        workers = [procs[n] for n in names]

        def assigned(workers: list[GatewayProcess] = workers) -> list[list[int]]:
            out = []
            for gw in workers:
                h = gw.health()
                out.append([] if h is None else h[1].get("cluster", {}).get("chirpstack", {}).get("partitions_assigned", []))
            return out

        # the three claim 12 partitions, 4 each, disjoint
        assert wait_for(lambda: sorted(p for ps in assigned() for p in ps) == list(range(12))
                        and [len(ps) for ps in assigned()] == [4, 4, 4], 60), (assigned(), workers[0].log()[-3000:])
        assert wait_for(lambda: (h := procs["ref"].health()) is not None and h[0] == 200, 60), procs["ref"].log()[-3000:]

        confirmed: list[int] = []
        publisher = threading.Thread(target=lambda: confirmed.extend(publish_confirmed(rabbit.host, rabbit.port,
                                                                                       uplinks[:split])))
        publisher.start()
        victim = procs["w2"]
        victim_parts = set(assigned()[1])
        assert wait_for(lambda: sum(max(0.0, gw.metric("readings_total")) for gw in workers) >= KILL_AT * total, 300), \
            [gw.metric("readings_total") for gw in workers]
        killed_at = time.time()
        victim.signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        publisher.join(300)
        assert not publisher.is_alive() and len(confirmed) == split  # the broker confirmed every uplink

        def drained(live: list[GatewayProcess]) -> bool:
            return (queues_drained(rabbit, "clu", 12) and queues_drained(rabbit, "ref", 4)
                    and all(gw.metric("cluster_unacked_uplinks") == 0 for gw in live + [procs["ref"]]))

        survivors = [procs["w1"], procs["w3"]]
        assert wait_for(lambda: drained(survivors), 300), [gw.metric("readings_total") for gw in survivors]
        # scale out: a fourth worker joins; partitions move to it by clean handoffs
        cfg, port = worker_config(tmp_path, rabbit, "w4", "clu", 12)
        procs["w4"] = GatewayProcess(cfg, port, tmp_path / "w4.log")
        names.append("w4")
        live = survivors + [procs["w4"]]
        assert wait_for(lambda: sorted(p for ps in assigned(live) for p in ps) == list(range(12))
                        and [len(ps) for ps in assigned(live)] == [4, 4, 4], 60), (assigned(live), procs["w4"].log()[-3000:])
        confirmed += publish_confirmed(rabbit.host, rabbit.port, uplinks[split:])
        assert len(confirmed) == total
        assert wait_for(lambda: drained(live), 300), [gw.metric("readings_total") for gw in live]
        assert procs["w4"].metric("cluster_partition_acquired_total") == 4  # took its share, with state
        for name in ("w1", "w3", "w4", "ref"):
            procs[name].signal(signal.SIGTERM)
            assert procs[name].wait(60) == 0, procs[name].log()[-3000:]

        # ---- every confirmed uplink processed, no (DevEUI, fCnt) gap ------------------------
        want: dict[str, set[int]] = defaultdict(set)
        for _, body in uplinks:
            want[body["deviceInfo"]["devEui"]].add(body["fCnt"])
        per_worker = {n: recorded(tmp_path / n) for n in names}
        got: dict[str, set[int]] = defaultdict(set)
        for rows in per_worker.values():
            for dev, fcnt in rows:
                got[dev].add(fcnt)
        missing = {d: sorted(want[d] - got[d])[:5] for d in want if want[d] - got[d]}
        assert not missing, f"{len(missing)} devices with unprocessed uplinks, e.g. {list(missing.items())[:3]}"
        duplicates = sum(len(rows) for rows in per_worker.values()) - total

        # ---- each device's readings: contiguous per worker; only the killed worker's tail repeats
        for dev in want:
            # the killed worker first where two start alike (it took them before the kill)
            # a worker may own a partition twice (w1 -> w2 at start-up, back to w1 when w2
            # dies): each worker's frame counters split into contiguous runs
            spans = sorted((run[0], n != "w2", run[-1], n) for n in names
                           for run in contiguous_runs(sorted(fc for d, fc in per_worker[n] if d == dev)))
            for (_, _, hi1, n1), (lo2, _, _, _) in zip(spans, spans[1:], strict=False):
                assert lo2 <= hi1 + 1, (dev, spans)  # no gap between owners
                assert lo2 == hi1 + 1 or n1 == "w2", (dev, spans)  # a replay only after the kill

        # ---- one owner per partition at a time; the dead worker's partitions moved ---------
        intervals: dict[int, list[tuple[float, float, str]]] = defaultdict(list)
        moved_at: dict[int, float] = {}
        for n in names:
            open_at: dict[int, float] = {}
            for t, p, what in ownership((tmp_path / f"{n}.log").read_text(errors="replace")):
                if what == "acquired":
                    open_at[p] = t
                    if n != "w2" and p in victim_parts and t >= killed_at - 0.01:
                        moved_at.setdefault(p, t)
                elif p in open_at:
                    intervals[p].append((open_at.pop(p), t, n))
            end = killed_at if n == "w2" else time.time()  # still open: owned until the kill, or the end
            for p, t in open_at.items():
                intervals[p].append((t, end, n))
        for p, owners in intervals.items():
            owners.sort()
            for (_, e1, _), (s2, _, _) in zip(owners, owners[1:], strict=False):
                assert s2 >= e1 - 0.002, (p, owners)  # log times have millisecond resolution
        assert set(moved_at) == victim_parts, (victim_parts, moved_at)
        failover = max(moved_at.values()) - killed_at

        # ---- the alert stream equals the single gateway's (up to duplicates with equal keys)
        def by_key(alerts: list[dict]) -> dict[str, tuple]:
            out: dict[str, tuple] = {}
            for a in alerts:
                ident = (a["device_id"], a["kind"], a["state"], a["details"].get("episode_start"))
                assert out.setdefault(a["key"], ident) == ident, (a, out[a["key"]])
            return out

        reference = by_key(alerts_of(tmp_path / "ref"))
        clustered = by_key([a for n in names for a in alerts_of(tmp_path / n)])
        kinds = {ident[1] for ident in reference.values()}
        assert {"anomaly", "battery_low"} <= kinds, kinds  # the comparison has teeth
        assert clustered == reference, (set(clustered) ^ set(reference))
        print(f"\n{total} uplinks, {len(reference)} alerts ({sorted(kinds)}); killed w2 (partitions "
              f"{sorted(victim_parts)}) at {KILL_AT:.0%}; its partitions moved within {failover:.2f} s; "
              f"{duplicates} uplinks processed twice (redelivered after the kill)")
        assert failover <= FAILOVER_BOUND_S
    finally:
        for gw in procs.values():
            gw.close()

"""A peer, side by side: Node-RED (npm package node-red, run here) with an MQTT-in ->
threshold function -> MQTT-out flow, on the same load and the same broker as our gateway.

    .venv/bin/python bench/nodered_peer.py [--backlog 40000] [--devices 1000] [--repeat 2]
                                           [--live 1000,2000,4000,8000 --seconds 5] [--json out.json]

Installs node-red with npm into bench/.node-red-cache (once; ignored by git; skipped with a
message when npm or the registry is not there). The flow: ``mqtt in`` (QoS 1, persistent
session, JSON) -> ``function`` (decode the Cayenne LPP temperature from the base64 payload,
publish an alert when above 30 °C; every 1,000 messages it also publishes its count and
Date.now() on ``nodered/stats``) -> ``mqtt out``. No model runs in it.

Saturation is measured as in bench/e2e_mqtt.py: a backlog of ChirpStack v4 uplinks is
queued on the broker for the consumer's offline persistent session, then drained flat
out; Node-RED's rate comes from its own stats timestamps (first to last), ours from the
gateway's metrics (readings, each one decoded, windowed, scored by the model and passed
through the alert policy). The two alternate ``--repeat`` times in one run. Then the raw
model's ceiling at the gateway's mean batch size, in the same process.

Live (``--live``), since a drained backlog flatters both: for each rate, a paho publisher
(bench/_loadgen.py, QoS 1) publishes at that fixed rate for ``--seconds`` while the gateway
consumes, then again while Node-RED consumes (each one's broker session is drained first
of what was published while it was stopped). Per step: messages handled, publish-to-decision
latency (the gateway: a score observer, right after the alert policy decided on the
window; Node-RED: Date.now() - the message's time in its function node, ms resolution),
p50/p99 and the median of the first and the last fifth of the step: "sustained" means all
handled within the step's time (+10 s at most) and no growing delay (last fifth <= 4x the
first, or <= 50 ms).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import WARM_READINGS, Mosquitto, free_port, gateway_config, machine, make_gateway  # noqa: E402
from e2e_mqtt import Probe, drain_gateway, loadgen, pct, raw_ceiling, source_emit, wait_metric, warm_up  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".node-red-cache"

FUNC = r"""
const b = Buffer.from(msg.payload.data || '', 'base64');
let temp = null;
for (let i = 0; i + 1 < b.length;) {
    const t = b[i + 1];
    if (t === 0x67) { temp = b.readInt16BE(i + 2) / 10; i += 4; }
    else if (t === 0x68) { i += 3; }
    else if (t === 0x74) { i += 4; }
    else break;
}
const n = (context.get('n') || 0) + 1;
context.set('n', n);
const lat = context.get('lat') || [];
lat.push(Date.now() - Date.parse(msg.payload.time));
const out = [];
if (temp !== null && temp > 30) {
    out.push({topic: 'nodered/alerts/' + msg.payload.deviceInfo.devEui, payload: JSON.stringify({temperature: temp})});
}
if (n % STATS_EVERY === 0) {
    out.push({topic: 'nodered/stats', payload: JSON.stringify({n: n, t: Date.now(), lat: lat})});
    context.set('lat', []);
} else {
    context.set('lat', lat);
}
return [out];
"""


STATS_EVERY = 200
FUNC = FUNC.replace("STATS_EVERY", str(STATS_EVERY))


def install() -> Path | None:
    exe = CACHE / "node_modules" / ".bin" / "node-red"
    if exe.exists():
        return exe
    if not shutil.which("npm"):
        print("Node-RED: skipped (npm is not installed)")
        return None
    CACHE.mkdir(exist_ok=True)
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), "node-red"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not exe.exists():
        print(f"Node-RED: skipped (npm install node-red failed: {r.stderr.strip()[-300:]})")
        return None
    return exe


def flow(port: int) -> list[dict]:
    broker = {"id": "broker1", "type": "mqtt-broker", "name": "bench", "broker": "127.0.0.1", "port": str(port),
              "clientid": "nodered-bench", "autoConnect": True, "usetls": False, "protocolVersion": "4",
              "keepalive": "60", "cleansession": False, "autoUnsubscribe": False, "birthTopic": "", "closeTopic": "", "willTopic": ""}
    return [
        {"id": "tab1", "type": "tab", "label": "bench"},
        broker,
        {"id": "in1", "type": "mqtt in", "z": "tab1", "name": "uplinks", "topic": "application/+/device/+/event/up",
         "qos": "1", "datatype": "json", "broker": "broker1", "nl": False, "rap": True, "rh": 0, "inputs": 0,
         "x": 100, "y": 100, "wires": [["fn1"]]},
        {"id": "fn1", "type": "function", "z": "tab1", "name": "threshold", "func": FUNC, "outputs": 1,
         "x": 300, "y": 100, "wires": [["out1"]]},
        {"id": "out1", "type": "mqtt out", "z": "tab1", "name": "alerts", "topic": "", "qos": "1", "retain": "false",
         "broker": "broker1", "x": 500, "y": 100, "wires": []},
    ]


class NodeRed:
    def __init__(self, exe: Path, broker_port: int, user_dir: Path) -> None:
        self.exe, self.user_dir = exe, user_dir
        user_dir.mkdir(parents=True, exist_ok=True)
        (user_dir / "flows.json").write_text(json.dumps(flow(broker_port)))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = free_port()
        self.proc = subprocess.Popen([str(self.exe), "-u", str(self.user_dir), "-p", str(port), "flows.json"],
                                     stdout=open(self.user_dir / "node-red.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while b"Connected to broker" not in (self.user_dir / "node-red.log").read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("Node-RED did not connect: " + (self.user_dir / "node-red.log").read_text()[-2000:])
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class Stats:
    def __init__(self, port: int) -> None:
        from paho.mqtt import client as mqtt

        self.points: list[tuple[int, float]] = []
        self.latencies: list[float] = []  # seconds, publish -> the function node (ms resolution)
        self.lock = threading.Lock()
        c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="bench-nodered-stats")
        c.on_message = self._on
        c.connect("127.0.0.1", port)
        c.subscribe("nodered/stats", qos=1)
        c.loop_start()
        self.client = c

    def _on(self, client, userdata, msg) -> None:  # noqa: ANN001
        d = json.loads(msg.payload)
        with self.lock:
            self.points.append((int(d["n"]), float(d["t"]) / 1000.0))
            self.latencies.extend(x / 1000.0 for x in d.get("lat", ()))


def drain_nodered(nr: NodeRed, stats: Stats, n0: int, n: int) -> float:
    with stats.lock:
        stats.points.clear()
    nr.start()
    deadline = time.monotonic() + 600
    while True:
        with stats.lock:
            pts = list(stats.points)
        if pts and pts[-1][0] >= n0 + n - STATS_EVERY:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"Node-RED: {pts[-1] if pts else None}")
        time.sleep(0.05)
    nr.stop()
    (a, ta), (b, tb) = pts[0], pts[-1]
    return (b - a) / (tb - ta)


def fifths(lat: list[float]) -> tuple[float, float]:
    """Median latency (ms) of the first and the last fifth of a step's decisions, in
    arrival order: a delay that grows during the step shows as last >> first."""
    k = max(1, len(lat) // 5)
    return pct(lat[:k], 50), pct(lat[-k:], 50)


def step_row(who: str, rate: float, gen: dict, lat: list[float], decided: int, drained: bool) -> dict:
    first, last = fifths(lat)
    sustained = drained and decided >= gen["published"] - STATS_EVERY and last <= max(4 * first, 50.0)
    row = {"who": who, "rate": rate, "published_per_s": gen["rate"], "published": gen["published"], "handled": decided,
           "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "first_fifth_p50_ms": first, "last_fifth_p50_ms": last,
           "sustained": sustained}
    print(f"  live {rate:>6.0f}/s {who:<12} published {gen['rate']:>7.0f}/s, handled {decided}/{gen['published']}, "
          f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, median first/last fifth {first:.1f}/{last:.1f} ms: "
          f"{'sustained' if sustained else 'NOT sustained (loss or growing delay)'}")
    return row


def live_gateway(gw, probe: Probe, port: int, devices: int, rate: float, seconds: float, fcnt: int,  # noqa: ANN001
                 expect: float) -> tuple[dict, int]:
    """One step of the live run: a paho publisher at ``rate`` for ``seconds``, the gateway
    consuming (its source connected); publish -> decision per reading."""
    probe.latencies = []
    probe.recording = True
    gen = loadgen(port, devices, rate=rate, seconds=seconds, fcnt_start=fcnt)
    try:
        wait_metric(gw, "readings_total", expect + gen["published"], timeout=max(10.0, seconds))
        drained = True
    except TimeoutError:
        drained = False
    time.sleep(0.05)
    gw.pipeline.idle.wait(5)  # the last batch decided (its deadline)
    probe.recording = False
    return step_row("lora-gateway", rate, gen, list(probe.latencies), len(probe.latencies), drained), gen["published"]


def live_nodered(nr: NodeRed, stats: Stats, port: int, devices: int, rate: float, seconds: float, fcnt: int,
                 queued: int) -> tuple[dict, int]:
    """The same step for Node-RED: started, its persistent session's queue (what was
    published while it was stopped) drained first, then the publisher runs."""
    with stats.lock:
        stats.points.clear()
    nr.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with stats.lock:
            n = stats.points[-1][0] if stats.points else 0
        if n >= queued - STATS_EVERY:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    with stats.lock:
        n0 = stats.points[-1][0] if stats.points else 0
        stats.latencies.clear()
    gen = loadgen(port, devices, rate=rate, seconds=seconds, fcnt_start=fcnt)
    deadline, drained = time.monotonic() + max(10.0, seconds), False
    while time.monotonic() < deadline:
        with stats.lock:
            n = stats.points[-1][0] if stats.points else 0
        if n >= n0 + gen["published"] - STATS_EVERY:
            drained = True
            break
        time.sleep(0.05)
    time.sleep(0.2)
    with stats.lock:
        n = stats.points[-1][0] if stats.points else 0
        lat = list(stats.latencies[STATS_EVERY:])  # the first report may hold queued messages' samples
    nr.stop()
    return step_row("Node-RED", rate, gen, lat, n - n0, drained), gen["published"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--backlog", type=int, default=40000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--live", default="", help="comma list of publish rates for the live run (e.g. 1000,2000,4000)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per live step")
    ap.add_argument("--max-delay-ms", type=float, default=5.0, help="the gateway's batch deadline (the CPU's auto: 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(machine())
    exe = install()
    if exe is None:
        return
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    backlog = -(-args.backlog // 1000) * 1000
    backlog = -(-backlog // args.devices) * args.devices
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-nr-") as tmp:
        nr = NodeRed(exe, broker.port, Path(tmp) / "node-red")
        nr.start()  # registers the persistent session (and its subscription)
        time.sleep(3)  # "Connected" is logged before the SUBSCRIBE completes
        nr.stop()
        stats = Stats(broker.port)
        gw = make_gateway(gateway_config(broker.host, broker.port, Path(tmp) / "state", max_delay_ms=args.max_delay_ms))
        gw.start()
        probe = Probe(gw.pipeline)
        result: dict = {"machine": machine(), "saturation": [], "live": []}
        try:
            warm_up(gw, args.devices, WARM_READINGS)
            fcnt = WARM_READINGS
            for rep in range(args.repeat):
                gw.sources[0].stop()
                loadgen(broker.port, args.devices, count=backlog, fcnt_start=fcnt)
                fcnt += backlog // args.devices
                g = drain_gateway(gw, backlog)
                ours = g["readings_per_s"]
                theirs = drain_nodered(nr, stats, 0, backlog)  # its counter restarts with the process
                result["saturation"].append({**g, "nodered_per_s": theirs})
                print(f"#{rep + 1}: backlog {backlog}: lora-gateway {ours:,.0f} readings/s (model on every reading, "
                      f"mean batch {g['mean_batch']:.1f}, {g['cpu_us_per_reading']:.0f} us CPU/reading) | "
                      f"Node-RED (node {version}) {theirs:,.0f} msg/s (threshold only) | ratio {ours / theirs:.2f}")
            if result["saturation"]:
                batch = max(1, int(round(float(np.mean([r["mean_batch"] for r in result["saturation"]])))))
                ceiling = raw_ceiling(gw.runtime, batch)
                best = max(r["windows_per_s"] for r in result["saturation"])
                result["raw_ceiling"] = {"batch": batch, "windows_per_s": ceiling, "pipeline_over_raw": best / ceiling}
                print(f"raw ONNX Runtime at the mean batch {batch} (same process, 1 thread): {ceiling:,.0f} windows/s; "
                      f"pipeline over raw: {best:,.0f} / {ceiling:,.0f} = {best / ceiling:.2f}")
            rates = [float(r) for r in args.live.split(",") if r]
            if rates:
                print(f"live: a paho publisher at each rate for {args.seconds:g} s, the gateway then Node-RED")
            expect = gw.metrics.get("readings_total")
            nr_queued = 0  # published while Node-RED was stopped: its session holds them
            for rate in rates:
                row, published = live_gateway(gw, probe, broker.port, args.devices, rate, args.seconds, fcnt, expect)
                fcnt += -(-published // args.devices)
                expect += published
                nr_queued += published
                result["live"].append(row)
                gw.sources[0].stop()
                row, published = live_nodered(nr, stats, broker.port, args.devices, rate, args.seconds, fcnt, nr_queued)
                fcnt += -(-published // args.devices)
                nr_queued = 0
                result["live"].append(row)
                gw.sources[0].start(source_emit(gw))  # drains what was published while it was stopped
                expect += published
                wait_metric(gw, "readings_total", expect, timeout=120)
                gw.pipeline.idle.wait(10)
        finally:
            gw.stop()
            nr.stop()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()

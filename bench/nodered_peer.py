"""A peer, side by side: Node-RED (npm package node-red, run here) with an MQTT-in ->
threshold function -> MQTT-out flow, on the same load and the same broker as our gateway.

    .venv/bin/python bench/nodered_peer.py [--backlog 40000] [--devices 1000] [--repeat 2]

Installs node-red with npm into bench/.node-red-cache (once; ignored by git; skipped with a
message when npm or the registry is not there). The flow: ``mqtt in`` (QoS 1, persistent
session, JSON) -> ``function`` (decode the Cayenne LPP temperature from the base64 payload,
publish an alert when above 30 °C; every 1,000 messages it also publishes its count and
Date.now() on ``nodered/stats``) -> ``mqtt out``. No model runs in it.

Saturation is measured as in bench/e2e_mqtt.py: a backlog of ChirpStack v4 uplinks is
queued on the broker for the consumer's offline persistent session, then drained flat
out; Node-RED's rate comes from its own stats timestamps (first to last), ours from the
gateway's metrics (readings, each one decoded, windowed, scored by the model and passed
through the alert policy). The two alternate ``--repeat`` times in one run.
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

from _common import WARM_READINGS, Mosquitto, free_port, gateway_config, machine, make_gateway  # noqa: E402
from e2e_mqtt import drain_gateway, loadgen, warm_up  # noqa: E402

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
const out = [];
if (temp !== null && temp > 30) {
    out.push({topic: 'nodered/alerts/' + msg.payload.deviceInfo.devEui, payload: JSON.stringify({temperature: temp})});
}
if (n % 1000 === 0) out.push({topic: 'nodered/stats', payload: JSON.stringify({n: n, t: Date.now()})});
return [out];
"""


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


def drain_nodered(nr: NodeRed, stats: Stats, n0: int, n: int) -> float:
    with stats.lock:
        stats.points.clear()
    nr.start()
    deadline = time.monotonic() + 600
    while True:
        with stats.lock:
            pts = list(stats.points)
        if pts and pts[-1][0] >= n0 + n - 1000:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"Node-RED: {pts[-1] if pts else None}")
        time.sleep(0.05)
    nr.stop()
    (a, ta), (b, tb) = pts[0], pts[-1]
    return (b - a) / (tb - ta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--backlog", type=int, default=40000)
    ap.add_argument("--repeat", type=int, default=2)
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
        gw = make_gateway(gateway_config(broker.host, broker.port, Path(tmp) / "state"))
        gw.start()
        try:
            warm_up(gw, args.devices, WARM_READINGS)
            fcnt = WARM_READINGS
            for rep in range(args.repeat):
                gw.sources[0].stop()
                loadgen(broker.port, args.devices, count=backlog, fcnt_start=fcnt)
                fcnt += backlog // args.devices
                ours = drain_gateway(gw, backlog)["readings_per_s"]
                theirs = drain_nodered(nr, stats, 0, backlog)  # its counter restarts with the process
                print(f"#{rep + 1}: backlog {backlog}: lora-gateway {ours:,.0f} readings/s (model on every reading) | "
                      f"Node-RED (node {version}) {theirs:,.0f} msg/s (threshold only) | ratio {ours / theirs:.2f}")
        finally:
            gw.stop()
            nr.stop()


if __name__ == "__main__":
    main()

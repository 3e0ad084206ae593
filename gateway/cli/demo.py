"""``lora-gateway demo``: the whole pipeline on a simulated field network, no broker, no radio.

A virtual radio module (firmware_bridge.simulator) runs on a pseudo-terminal with N sensor
nodes behind it, one of which develops a sustained temperature fault and recovers. The
gateway reads it through the real ``serial`` source, decodes Cayenne LPP, scores windows
with the bundled model and prints readings and alerts live; alerts are also written to
``<out>/alerts.jsonl`` by the ``file`` handler. While it runs, the status page (devices,
charts, alerts with a false-alarm/confirmed control) is at ``http://<--listen>/``; the
operator token for that control is printed. Simulated time runs fast (``--time-scale``)
so a day of readings passes in seconds; it stops by itself after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from models.cli.errors import UserError
from gateway.types import Alert, Reading

CALIBRATION_STEPS = 1008
INTERVAL_S = 600.0
CALIBRATION_DAYS = CALIBRATION_STEPS * INTERVAL_S / 86400  # 7 simulated days
TOKEN_ENV = "LORA_GATEWAY_DEMO_TOKEN"
COLOURS = {"raised": "\033[1;31m", "cleared": "\033[1;32m", "reset": "\033[0m"}


class Console:
    """Prints a status line per second and every alert as it happens."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour
        self.lock = threading.Lock()
        self.latest: dict[str, Reading] = {}
        self.readings = 0
        self.alert_events = 0
        self.open: set[tuple[str, str]] = set()  # (device, kind) raised and not cleared yet
        self.started = time.monotonic()

    def on_reading(self, reading: Reading) -> None:
        self.readings += 1
        self.latest[reading.device_id] = reading

    def on_alert(self, alert: Alert) -> None:
        self.alert_events += 1
        if alert.state == "raised":
            self.open.add((alert.device_id, alert.kind))
        else:
            self.open.discard((alert.device_id, alert.kind))
        c = COLOURS if self.colour else {k: "" for k in COLOURS}
        at = time.strftime("%H:%M:%S", time.localtime(alert.timestamp))
        detail = f" channel={alert.details.get('channel')}" if alert.details.get("channel") else ""
        with self.lock:
            print(f"{c.get(alert.state, '')}ALERT {alert.state.upper():<7}{c['reset']} node {alert.device_id} "
                  f"{alert.kind} [{alert.severity}] {alert.message}{detail} at {at}", flush=True)

    def status(self, metrics: Any) -> None:
        parts = []
        for dev in sorted(self.latest, key=lambda d: int(d) if d.isdigit() else d):
            r = self.latest[dev]
            t = r.values.get("temperature")
            parts.append(f"{dev}:{t:5.1f}°C" if t is not None else f"{dev}:?")
        scored = int(metrics.get("windows_scored_total"))
        with self.lock:
            print(f"[{time.monotonic() - self.started:5.1f}s] readings {self.readings:6d}  windows scored {scored:6d}  "
                  f"open alerts {len(self.open):2d}  | " + "  ".join(parts), flush=True)


def demo_config(sim_path: str, out: Path, nodes: int, listen: str | None = None) -> dict[str, Any]:
    """The demo's gateway config; ``out`` is made absolute first (a relative handler path
    would be taken under the state directory)."""
    out = out.resolve()
    return {
        "gateway": {"id": "demo", "state_dir": str(out / "state")},
        "sources": [{"type": "serial", "name": "radio", "port": sim_path, "protocol": "bridge", "baudrate": 115200}],
        "handlers": [{"type": "file", "path": str(out / "alerts.jsonl"), "fsync": False}],
        "profiles": [{"name": "field-nodes", "match_dev_eui": [str(i) for i in range(1, nodes + 1)],
                      "codec": "cayenne_lpp", "battery_field": "voltage_4", "expected_interval_s": 600,
                      # soil moisture trends for days (drying); scoring it needs recalibration
                      # over weeks, so the demo scores the two channels with a daily cycle
                      "channels": {"temperature": "temperature_1", "humidity": "humidity_2"}}],
        # a simulated week of readings calibrates each node (the manifest's default): four days
        # did not span the weather of the days after, and healthy nodes alarmed near 1.0
        "model": {"calibration_steps": CALIBRATION_STEPS},
        "alerts": {"min_interval_s": 0},
        "metrics": {"listen": listen},
        # 40 readings/s per node: 2880 points chart the last ~70 s, the whole fault included
        "status": {"operator_token_env": TOKEN_ENV, "history_points": 2880, "refresh_s": 5},
    }


def free_listen(listen: str) -> str:
    """``listen`` when its port can be bound now, else the same host with a free port
    (a gateway already on 9108 must not stop the demo)."""
    host, _, port = listen.rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host or "127.0.0.1", int(port)))
    except OSError:
        return f"{host or '127.0.0.1'}:0"
    return listen


def cmd_demo(args: argparse.Namespace) -> int:
    from firmware_bridge.sensor_nodes import parse_fault
    from firmware_bridge.simulator import PtySimulator
    from gateway.config import validate_config
    from gateway.plugin_manager import Registry, make_plugin_manager
    from gateway.service import Gateway, StartupError

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "alerts.jsonl").unlink(missing_ok=True)
    interval = INTERVAL_S
    # calibration (CALIBRATION_STEPS readings, 7 simulated days at one reading per 10 min)
    # comes first; the fault starts two days later and lasts half a day
    start_k = CALIBRATION_STEPS + 288
    fault_text = args.fault or f"shift:node={min(3, args.nodes)},start={start_k * interval:.0f},end={(start_k + 72) * interval:.0f},size=40"
    try:
        fault = parse_fault(fault_text)
    except ValueError as exc:
        raise UserError(f"--fault: {exc}") from exc
    console = Console(colour=sys.stdout.isatty() and not args.no_colour)
    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    with PtySimulator(protocol="bridge", nodes=args.nodes, interval_s=interval, time_scale=args.time_scale,
                      baud=115200, seed=args.seed, faults=[fault]) as sim:
        print(f"simulated field network: {args.nodes} nodes behind a virtual radio module on {sim.path} -> {sim.device}")
        print(f"fault injected: {fault_text} (simulated seconds); alerts also go to {out / 'alerts.jsonl'}")
        listen = free_listen(args.listen) if args.listen else None
        os.environ[TOKEN_ENV] = secrets.token_urlsafe(9)
        config = validate_config(demo_config(sim.path, out, args.nodes, listen), registry, "demo")
        gateway = Gateway(config, pm, registry, on_reading=console.on_reading, on_alert=console.on_alert)
        try:
            gateway.start()
        except StartupError as exc:
            raise UserError(str(exc)) from exc
        print(f"model serving on {', '.join(gateway.runtime.providers_in_use) if gateway.runtime else '?'}; "
              f"learning each node's normal for {CALIBRATION_DAYS:g} simulated days before scoring")
        if gateway.metrics_server is not None:
            print(f"status page: http://{config.metrics.listen.rpartition(':')[0]}:{gateway.metrics_server.port}/ "
                  f"(operator token for its false alarm / confirmed buttons: {os.environ[TOKEN_ENV]})", flush=True)
        deadline = time.monotonic() + args.duration
        try:
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                console.status(gateway.metrics)
        except KeyboardInterrupt:
            pass
        finally:
            gateway.stop()
    m = gateway.metrics
    print(f"done: {console.readings} readings, {int(m.get('windows_scored_total'))} windows scored in "
          f"{int(m.get('inference_batches_total'))} batches, {console.alert_events} alert events "
          f"({len(console.open)} still open), "
          f"{int(m.get('uplinks_quarantined_total'))} quarantined; alerts in {out / 'alerts.jsonl'}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on a simulated field network (no broker, no radio)",
                       description=__doc__)
    p.add_argument("--duration", type=float, default=45.0, help="seconds to run (default 45)")
    p.add_argument("--nodes", type=int, default=6, help="virtual sensor nodes (default 6)")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for alerts.jsonl and state (default demo-out)")
    p.add_argument("--time-scale", type=float, default=24000.0, help="simulated seconds per real second (default 24000: 40 readings/s per node)")
    p.add_argument("--fault", help="fault to inject, e.g. shift:node=3,start=172800,end=216000,size=40 (default: one on node 3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated sensor readings (default 1)")
    p.add_argument("--no-colour", action="store_true", help="plain console output, no ANSI colours "
                                                             "(the default when stdout is not a terminal)")
    p.add_argument("--listen", default="127.0.0.1:9108",
                   help="host:port of the status page and /metrics while the demo runs (default 127.0.0.1:9108; "
                        "a free port when that one is taken; '' turns it off)")
    p.set_defaults(func=cmd_demo)

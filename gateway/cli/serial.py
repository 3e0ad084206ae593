"""``lora-gateway simulate`` and ``lora-gateway serial-watch``.

``simulate`` runs virtual nodes behind a virtual module on a pseudo-terminal (printing
the path to open) or, with ``--mqtt HOST:PORT``, publishes them as ChirpStack v4 uplinks.
``serial-watch`` runs the gateway's ``serial`` source on a real module (``--port``) or,
without one, on the simulator, and prints every reading the gateway decodes: the quick
check that a module is wired, configured and understood. (``lora-gateway demo``, the
whole pipeline on the simulator, lives in gateway/cli/demo.py.)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

from firmware_bridge.drivers import PROTOCOLS
from firmware_bridge.sensor_nodes import FaultSpec, parse_fault


def _fault(text: str) -> FaultSpec:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def _common(p: argparse.ArgumentParser, duration: float | None) -> None:
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="bridge", help="what the virtual module speaks")
    p.add_argument("--nodes", type=int, default=3, help="number of virtual sensor nodes (addresses 1..N)")
    p.add_argument("--interval", type=float, default=60.0, help="simulated seconds between readings of one node")
    p.add_argument("--time-scale", type=float, default=600.0, help="simulated seconds per real second")
    p.add_argument("--baud", type=int, default=115200, help="line rate the output is paced at (10 bits a byte)")
    p.add_argument("--duration", type=float, default=duration, help="real seconds to run (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sensor values and faults")
    p.add_argument("--fault", type=_fault, action="append", default=[],
                   help="sensor fault, e.g. shift:node=2,start=600,end=1200,size=5 (kinds: shift, stuck, spike)")
    p.add_argument("--bitflip-rate", type=_rate, default=0.0, help="fraction of records with one bit flipped")
    p.add_argument("--truncate-rate", type=_rate, default=0.0, help="fraction of records cut short")
    p.add_argument("--garbage-rate", type=_rate, default=0.0, help="fraction of records preceded by a garbage burst")
    p.add_argument("--unplug-every", type=float, default=None, help="close and recreate the pty every N real seconds")


def add_commands(subparsers: Any) -> None:
    sim = subparsers.add_parser(
        "simulate", help="virtual LoRa radio module on a pseudo-terminal (or MQTT)",
        description="Run N virtual sensor nodes behind a virtual radio module on a pseudo-terminal and print "
                    "the device path to open (a symlink that survives simulated unplugs), in any supported "
                    "protocol, paced at --baud, with faults on request. With --mqtt HOST:PORT the same nodes "
                    "are published as ChirpStack v4 uplinks instead.")
    _common(sim, None)
    sim.add_argument("--full-speed", action="store_true", help="send back to back at the line rate")
    sim.add_argument("--link", default=None, help="directory for the stable device symlink (default: a temp dir)")
    sim.add_argument("--mqtt", default=None, metavar="HOST:PORT", help="publish ChirpStack v4 uplinks instead of a pty")
    sim.add_argument("--application", default="00000000-0000-0000-0000-000000000001", help="ChirpStack application id")
    sim.set_defaults(func=run_simulate)
    watch = subparsers.add_parser(
        "serial-watch", help="print the readings the serial source decodes from a module (or the simulator)",
        description="Open a radio module with the gateway's serial source and print every decoded reading. "
                    "Without --port, a simulated module is used (the simulator options apply).")
    _common(watch, None)
    watch.add_argument("--port", default=None, help="serial device, e.g. /dev/serial/by-id/usb-... (default: simulator)")
    watch.add_argument("--frequency", type=int, default=None, help="configure: frequency in Hz")
    watch.add_argument("--sf", type=int, default=None, help="configure: spreading factor")
    watch.add_argument("--bandwidth", type=float, default=None, help="configure: bandwidth in kHz")
    watch.add_argument("--address", type=int, default=None, help="configure: the module's own address (REYAX)")
    watch.add_argument("--address-prefix-bytes", type=int, default=None,
                       help="payload bytes holding the sender address (rak3172/seeed_e5; default 2)")
    watch.set_defaults(func=run_watch)


def _check(args: argparse.Namespace) -> None:
    from models.cli.errors import UserError

    if args.nodes < 1 or args.interval <= 0 or args.time_scale <= 0 or args.baud <= 0:
        raise UserError("--nodes, --interval, --time-scale and --baud must be positive")


def _wait(duration: float | None, stop: threading.Event) -> None:
    try:
        stop.wait(duration)
    except KeyboardInterrupt:
        pass


def run_simulate(args: argparse.Namespace) -> int:
    from models.cli.errors import UserError

    _check(args)
    if args.mqtt:
        from firmware_bridge.mqtt_sim import MqttSimulator

        host, _, port = args.mqtt.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--mqtt wants HOST:PORT, got {args.mqtt!r}")
        publisher = MqttSimulator(host, int(port), args.nodes, interval_s=args.interval, time_scale=args.time_scale,
                            seed=args.seed, faults=args.fault, application_id=args.application)
        print(f"publishing {args.nodes} nodes to mqtt://{host}:{port}/application/{args.application}/device/+/event/up",
              flush=True)
        try:
            n = publisher.run(args.duration)
        except ConnectionError as exc:
            raise UserError(str(exc)) from exc
        except KeyboardInterrupt:
            n = publisher.published
        print(f"published {n} uplinks", flush=True)
        return 0
    from firmware_bridge.simulator import PtySimulator

    with PtySimulator(args.protocol, args.nodes, interval_s=args.interval, time_scale=args.time_scale,
                      baud=args.baud, seed=args.seed, faults=args.fault, bitflip_rate=args.bitflip_rate,
                      truncate_rate=args.truncate_rate, garbage_rate=args.garbage_rate,
                      unplug_every_s=args.unplug_every, full_speed=args.full_speed, link_dir=args.link) as sim:
        print(f"device: {sim.path}", flush=True)
        print(f"(now {sim.device}; protocol {args.protocol}, {args.baud} baud; open the device path, "
              f"it survives simulated unplugs)", flush=True)
        _wait(args.duration, threading.Event())
        stats = dict(sim.stats)
    print("sent: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.items())), flush=True)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    """Serial source on ``--port`` (or a simulator) printing decoded readings until --duration."""
    import contextlib

    from firmware_bridge.simulator import PtySimulator
    from gateway.contracts import PluginContext
    from gateway.ingest.decoding import decode_uplink
    from gateway.metrics import Metrics
    from gateway.plugin_manager import Registry, make_plugin_manager
    from gateway.types import DecodeError, RawUplink
    from models.cli.errors import UserError

    _check(args)
    pm = make_plugin_manager(load_entry_points=False)
    factory, options_model = Registry(pm).sources["serial"]
    metrics = Metrics()
    lock = threading.Lock()

    def show(uplink: RawUplink) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(uplink.received_at))
        try:
            reading, _ = decode_uplink(pm, uplink, None)
            values = " ".join(f"{k}={v:g}" for k, v in sorted(reading.values.items()))
        except DecodeError as exc:
            values = f"undecoded ({exc}) {uplink.payload.hex()}"
        with lock:
            print(f"{stamp} node={uplink.device_id} rssi={uplink.radio.rssi} snr={uplink.radio.snr} {values}",
                  flush=True)

    configure = {k: v for k, v in (("frequency_hz", args.frequency), ("spreading_factor", args.sf),
                                   ("bandwidth_khz", args.bandwidth), ("address", args.address)) if v is not None}
    with contextlib.ExitStack() as stack:
        extra: dict[str, Any] = {}
        port = args.port
        if port is None:
            sim = stack.enter_context(PtySimulator(
                args.protocol, args.nodes, interval_s=args.interval, time_scale=args.time_scale, baud=args.baud,
                seed=args.seed, faults=args.fault, bitflip_rate=args.bitflip_rate, truncate_rate=args.truncate_rate,
                garbage_rate=args.garbage_rate, unplug_every_s=args.unplug_every))
            port, extra["clock"] = sim.path, sim.clock
            print(f"simulated {args.protocol} module on {sim.path} ({sim.device})", flush=True)
        try:
            options = options_model.model_validate({
                "port": port, "protocol": args.protocol, "baudrate": args.baud, "configure": configure or None,
                "address_prefix_bytes": args.address_prefix_bytes,
                "reopen_backoff_s": {"initial": 0.1, "max": 5.0}})
            source = factory("watch", options, PluginContext(metrics=metrics, extra=extra))
        except ValueError as exc:
            raise UserError(str(exc).splitlines()[0] if "validation error" not in str(exc) else str(exc)) from exc
        source.start(show)
        try:
            _wait(args.duration, threading.Event())
        finally:
            source.stop()
    counts = {k: v for k, v in metrics.snapshot().items() if k.startswith("serial_")}
    print("serial: " + ", ".join(f"{k}={v:g}" for k, v in sorted(counts.items())), file=sys.stderr)
    return 0

"""The simulator: virtual sensor nodes, line rate over a real pty, the CLI, MQTT output."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial
from paho.mqtt import client as mqtt

from firmware_bridge.drivers import make_driver
from firmware_bridge.drivers.base import ModuleUplink
from firmware_bridge.sensor_nodes import SIGMA, SensorNode, lpp_values, parse_fault
from firmware_bridge.simulator import PtySimulator
from gateway.cli import main as cli_main
from gateway.contracts import PluginContext
from gateway.metrics import Metrics
from gateway.types import RawUplink
from plugins.decoders.cayenne_lpp import decode_lpp
from plugins.sources.mqtt.shapes import parse_uplink
from plugins.sources.serial_source import SerialSource, SerialSourceOptions

REPO = Path(__file__).resolve().parent.parent
T0 = 1_750_000_000.0


def test_nodes_are_deterministic_plausible_and_lpp_decodable() -> None:
    a, b = SensorNode(2, seed=7), SensorNode(2, seed=7)
    for k in range(0, 2000, 37):
        va, vb = a.reading(k, T0), b.reading(k, T0)
        assert va == vb
        assert -10 < va["temperature"] < 40 and 0 <= va["humidity"] <= 100 and 3.0 < va["battery"] < 3.7
        q = lpp_values(va)
        assert decode_lpp(a.payload(va)) == pytest.approx({
            "temperature_1": q["temperature"], "humidity_2": q["humidity"],
            "analog_input_3": q["soil_moisture"], "voltage_4": q["battery"]})
    assert SensorNode(2, seed=8).reading(5, T0) != a.reading(5, T0)
    # a diurnal cycle: the day's range is several degrees
    day = [a.normal(k, T0)["temperature"] for k in range(0, 1440, 10)]
    assert max(day) - min(day) > 8


def test_faults_shift_stuck_and_spike_only_inside_their_window() -> None:
    shift = parse_fault("shift:node=2+3,start=600,end=1200,size=5,channels=temperature+humidity")
    node = SensorNode(2, seed=1, interval_s=60, faults=[shift])
    for k in range(40):
        delta = node.reading(k, T0)["temperature"] - node.normal(k, T0)["temperature"]
        inside = 600 <= k * 60 < 1200
        assert delta == pytest.approx(5 * SIGMA["temperature"] if inside else 0.0)
    assert SensorNode(1, faults=[shift]).reading(12, T0) == SensorNode(1).reading(12, T0)
    stuck = SensorNode(1, interval_s=60, faults=[parse_fault("stuck:node=1,start=300,end=900,channels=soil_moisture")])
    held = {stuck.reading(k, T0)["soil_moisture"] for k in range(5, 15)}
    assert len(held) == 1 and stuck.reading(15, T0)["soil_moisture"] not in held
    spikes = SensorNode(1, interval_s=60, faults=[parse_fault("spike:node=1,start=0,size=10")])
    hits = sum(1 for k in range(200) if spikes.reading(k, T0)["temperature"] != spikes.normal(k, T0)["temperature"])
    assert 15 < hits < 70


@pytest.mark.parametrize("text, message", [
    ("drift:node=1", "kind"), ("shift:node=x", "bad number"), ("shift:start=5,end=1", "not after"),
    ("shift:colour=red", "unknown fault option"), ("shift:channels=pressure", "unknown channel"),
])
def test_bad_fault_specs_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fault(text)


def read_for(port: str, protocol: str, seconds: float, baud: int = 115200) -> tuple[list[ModuleUplink], dict]:
    driver = make_driver(protocol)
    got: list[ModuleUplink] = []
    with serial.Serial(port, baud, timeout=0.05) as ser:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            got += [e for e in driver.feed(ser.read(ser.in_waiting or 1)) if isinstance(e, ModuleUplink)]
    return got, dict(driver.counts)


@pytest.mark.parametrize("protocol", ["bridge", "reyax"])
def test_line_rate_every_good_frame_arrives_at_full_speed(protocol: str) -> None:
    """Back to back at 115200 baud for a few seconds, through the gateway's serial source."""
    baud, seconds = 115200, 2.5
    got: list[RawUplink] = []
    metrics = Metrics()
    with PtySimulator(protocol, nodes=8, baud=baud, full_speed=True) as sim:
        opts = SerialSourceOptions.model_validate({"port": sim.path, "protocol": protocol, "baudrate": baud})
        source = SerialSource("line", opts, PluginContext(metrics=metrics))
        source.start(got.append)
        try:
            time.sleep(seconds)
            assert sim.wait_drained(10)  # stop sending; the gateway has read every byte
            sent = sim.records("ok")
            deadline = time.monotonic() + 5
            while len(got) < len(sent) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            source.stop()
    assert metrics.get("serial_frames_total", result="ok") == len(got)
    assert metrics.get("serial_frames_total") == len(got)  # nothing rejected
    # everything the simulator sent arrived, in order
    assert [(u.device_id, u.payload) for u in got] == [(r.device_id, r.payload) for r in sent]
    frame_bytes = len(sim.module.render(1, 0, sent[0].payload, -70, 5))
    capacity = baud / 10 / frame_bytes * seconds
    assert len(got) > 0.25 * capacity, (len(got), capacity)  # it did run near the line rate


def test_automatic_unplugs_and_simulated_time() -> None:
    driver = make_driver("seeed_e5")
    got: list[ModuleUplink] = []
    with PtySimulator("seeed_e5", nodes=2, interval_s=60, time_scale=3000, unplug_every_s=0.4,
                      unplug_gap_s=0.05, start_time=T0) as sim:
        deadline = time.monotonic() + 8
        ser: serial.Serial | None = None
        try:
            while time.monotonic() < deadline and (sim.stats["unplugs"] < 2 or len(got) < 40):
                if ser is None:
                    try:
                        ser = serial.Serial(sim.path, 115200, timeout=0.05)
                        driver = make_driver("seeed_e5")  # a new port: forget any partial line
                    except serial.SerialException:
                        time.sleep(0.02)  # the device is gone for a moment
                        continue
                try:
                    data = ser.read(ser.in_waiting or 1)
                except serial.SerialException:
                    ser.close()
                    ser = None
                    continue
                got += [e for e in driver.feed(data) if isinstance(e, ModuleUplink)]
        finally:
            if ser is not None:
                ser.close()
        assert sim.stats["unplugs"] >= 2
        assert T0 < sim.clock() < T0 + 3000 * 10
        records = sim.records(None)
    ok = [r for r in records if r.kind == "ok"]
    keys = [(int.from_bytes(u.payload[:2], "big"), u.payload[2:]) for u in got]
    assert keys == [(r.node, r.payload) for r in ok][: len(keys)]  # in order, nothing missing
    assert len(ok) - len(keys) <= 1
    assert sum(1 for r in records if r.kind == "unplug_cut") == sim.stats["unplugs"]


def test_simulate_command_prints_the_device_path() -> None:
    cmd = [sys.executable, "-m", "gateway.cli", "simulate", "--protocol", "rak3172", "--nodes", "2",
           "--duration", "2", "--time-scale", "3000"]
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("device: ")
        got, counts = read_for(first.split(": ", 1)[1].strip(), "rak3172", 0.8)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert len(got) > 5 and counts["ok"] == len(got)
    assert "sent: ok=" in out


def test_serial_watch_decodes_readings_from_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serial-watch", "--protocol", "reyax", "--duration", "1", "--time-scale", "3000",
                     "--fault", "shift:node=1,start=0,size=20", "--frequency", "868100000", "--sf", "9",
                     "--bandwidth", "125", "--address", "1"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "serial_frames_total{result=ok,source=watch}" in captured.err
    lines = [line for line in out.splitlines() if "node=" in line]
    assert len(lines) > 5 and all("temperature_1=" in line for line in lines)


def test_simulate_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["simulate", "--fault", "melt:node=1"])
    assert cli_main(["simulate", "--mqtt", "no-port-here", "--duration", "0.1"]) == 1
    assert "HOST:PORT" in capsys.readouterr().err


def test_simulate_mqtt_publishes_chirpstack_v4_uplinks(broker) -> None:
    received: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sim-test")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("application/+/device/+/event/up", qos=1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    client.on_message = lambda c, u, msg: received.append((msg.topic, msg.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(5)
        assert cli_main(["simulate", "--mqtt", f"{broker.host}:{broker.port}", "--nodes", "3",
                         "--duration", "1", "--time-scale", "3600"]) == 0
        deadline = time.monotonic() + 5
        while len(received) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert len(received) >= 30
    ups = [parse_uplink(topic, body, "chirpstack_v4") for topic, body in received]
    assert {u.device_id for u in ups} == {f"a84041000000{i:04x}" for i in (1, 2, 3)}
    first = [u for u in ups if u.device_id.endswith("1")]
    assert [u.f_cnt for u in first] == list(range(len(first)))
    assert math.isclose(first[1].received_at - first[0].received_at, 60.0, abs_tol=0.01)
    assert set(decode_lpp(ups[0].payload)) == {"temperature_1", "humidity_2", "analog_input_3", "voltage_4"}
    assert all(u.radio.rssi is not None and u.radio.snr is not None for u in ups)
    assert json.loads(received[0][1])["deviceInfo"]["devEui"] == ups[0].device_id

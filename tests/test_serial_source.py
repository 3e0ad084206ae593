"""The ``serial`` source over real pseudo-terminals driven by the simulator."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from firmware_bridge.commands import BridgeCommandError
from firmware_bridge.drivers.base import CommandTimeout, ModuleError
from firmware_bridge.simulator import PtySimulator
from gateway.contracts import PluginContext, Source
from gateway.metrics import Metrics
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.types import RawUplink
from plugins.sources.serial_source import SerialSource, SerialSourceOptions


class Collector:
    def __init__(self) -> None:
        self.items: list[RawUplink] = []
        self._lock = threading.Lock()

    def __call__(self, uplink: RawUplink) -> None:
        with self._lock:
            self.items.append(uplink)

    def snapshot(self) -> list[RawUplink]:
        with self._lock:
            return list(self.items)


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def make_source(sim: PtySimulator | None, metrics: Metrics, name: str = "radio", **options: object) -> SerialSource:
    opts = SerialSourceOptions.model_validate({
        "port": sim.path if sim else options.pop("port"),
        "protocol": sim.protocol if sim else options.pop("protocol", "bridge"),
        "reopen_backoff_s": {"initial": 0.05, "max": 0.2}, **options})
    extra = {"clock": sim.clock} if sim else {}
    return SerialSource(name, opts, PluginContext(metrics=metrics, extra=extra))


def test_plugin_registers_serial_with_a_strict_options_model() -> None:
    registry = Registry(make_plugin_manager(load_entry_points=False))
    factory, model = registry.sources["serial"]
    assert model is SerialSourceOptions
    with pytest.raises(ValidationError):
        model.model_validate({"port": "/dev/ttyUSB0", "baud": 9600})
    with pytest.raises(ValidationError):
        model.model_validate({"port": "/dev/ttyUSB0", "protocol": "xbee"})
    for field in SerialSourceOptions.model_fields.values():
        assert field.description
    src = factory("s", model.model_validate({"port": "/nonexistent"}), PluginContext(metrics=Metrics()))
    assert isinstance(src, Source) and not src.connected()
    with pytest.raises(ValueError, match="address"):
        make_source(None, Metrics(), port="/x", protocol="rak3172", configure={"address": 3})


@pytest.mark.parametrize("protocol", ["bridge", "reyax", "rak3172", "seeed_e5"])
def test_every_record_arrives_with_address_payload_and_radio(protocol: str) -> None:
    metrics = Metrics()
    got = Collector()
    with PtySimulator(protocol, nodes=3, time_scale=3000, max_messages=60) as sim:
        source = make_source(sim, metrics)
        source.start(got)
        try:
            wait_for(lambda: len(got.snapshot()) >= 60)
            assert source.connected()
        finally:
            source.stop()
        sent = sim.records("ok")
    assert not source.connected()
    items = got.snapshot()
    assert [(u.device_id, u.payload) for u in items] == [(r.device_id, r.payload) for r in sent]
    assert {u.device_id for u in items} == {"1", "2", "3"}
    assert all(u.source == "radio" and u.shape == protocol and u.radio.rssi is not None for u in items)
    if protocol == "bridge":
        assert [u.f_cnt for u in items] == [r.seq for r in sent]
        assert items[0].radio.spreading_factor == 9 and items[0].radio.frequency_hz == 868_100_000
    times = [u.received_at for u in items]
    assert times == sorted(times) and times[-1] - times[0] > 60 * 15  # simulated, not wall, time
    assert metrics.get("serial_frames_total", source="radio", result="ok") == 60
    assert metrics.get("serial_connected", source="radio") == 0


CONFIG = {"frequency_hz": 868_100_000, "spreading_factor": 10, "bandwidth_khz": 125}


@pytest.mark.parametrize("protocol, extra, check", [
    ("reyax", {"address": 7}, lambda m: (m.band, m.parameter, m.address) == (868_100_000, (10, 7, 1, 12), 7)),
    ("rak3172", {}, lambda m: m.p2p == "868100000:10:125:0:8:14" and m.mode == 0),
    ("seeed_e5", {}, lambda m: m.mode == "TEST"),
    ("bridge", {}, lambda m: (m.frequency_hz, m.spreading_factor, m.bandwidth_hz) == (868_100_000, 10, 125_000)),
])
def test_configure_at_open_checks_every_reply(protocol: str, extra: dict, check: Callable) -> None:
    got = Collector()
    with PtySimulator(protocol, nodes=1, time_scale=60) as sim:
        source = make_source(sim, Metrics(), configure={**CONFIG, **extra})
        source.start(got)
        try:
            assert source.configured.wait(10)
            assert check(sim.module)
        finally:
            source.stop()


def test_module_errors_are_typed_and_named() -> None:
    with PtySimulator("reyax", nodes=1, time_scale=1) as sim:
        source = make_source(sim, Metrics())
        source.start(Collector())
        try:
            wait_for(source.connected)
            at = source.commander
            assert at.command("AT+ADDRESS?") == ["+ADDRESS=0"]
            with pytest.raises(ModuleError) as err:
                at.command("AT+PARAMETER=9,7,1,3")
            assert err.value.name == "preamble value is not allowed"
            with pytest.raises(ModuleError, match="unknown command"):
                at.command("AT+NOPE")
        finally:
            source.stop()
    with PtySimulator("seeed_e5", nodes=1, time_scale=1) as sim:
        source = make_source(sim, Metrics())
        source.start(Collector())
        try:
            wait_for(source.connected)
            with pytest.raises(ModuleError, match="unavailable in current mode"):
                source.commander.command("AT+TEST=RXLRPKT")
        finally:
            source.stop()


def test_bridge_commands_reply_error_or_timeout() -> None:
    with PtySimulator("bridge", nodes=1, time_scale=1) as sim:
        source = make_source(sim, Metrics())
        source.start(Collector())
        try:
            wait_for(source.connected)
            cmd = source.commander
            assert cmd.ping() < 1.0
            with pytest.raises(BridgeCommandError) as err:
                cmd.set_spreading_factor(13)
            assert err.value.name == "BAD_PARAM"
            cmd.set_frequency(869_525_000)
            assert sim.module.frequency_hz == 869_525_000
        finally:
            source.stop()
    master, slave = os.openpty()  # a port where nothing answers
    try:
        source = make_source(None, Metrics(), port=os.ttyname(slave))
        source.start(Collector())
        try:
            wait_for(source.connected)
            with pytest.raises(CommandTimeout):
                source.commander.ping(timeout_s=0.2)
        finally:
            source.stop()
    finally:
        os.close(master)
        os.close(slave)


def test_unplug_mid_stream_reopens_and_only_the_in_flight_record_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    got = Collector()
    with PtySimulator("bridge", nodes=2, time_scale=3000) as sim:
        source = make_source(sim, metrics)
        source.start(got)
        try:
            wait_for(lambda: len(got.snapshot()) >= 20)
            sim.unplug()
            wait_for(lambda: sim.stats["unplugs"] == 1)  # the kernel may reuse the pts number
            n = len(got.snapshot())
            wait_for(lambda: len(got.snapshot()) >= n + 20)
            sim.unplug()
            wait_for(lambda: sim.stats["unplugs"] == 2)
            n = len(got.snapshot())
            wait_for(lambda: len(got.snapshot()) >= n + 20)
            assert source.connected()
            assert sim.wait_drained(10)
            records = sim.records(None)
            ok_seqs = [r.seq for r in records if r.kind == "ok"]
            wait_for(lambda: len(got.snapshot()) >= len(ok_seqs))
        finally:
            source.stop()
    cut = [r for r in records if r.kind == "unplug_cut"]
    assert len(cut) == 2
    arrived = [u.f_cnt for u in got.snapshot()]
    assert arrived == ok_seqs  # every complete record, in order: only the two in flight are lost
    assert not {r.seq for r in cut} & set(arrived)
    assert metrics.get("serial_reopens_total", source="radio") == 2
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 2 and all("reopening in" in m for m in lost)
    assert metrics.get("serial_frames_total", source="radio", result="ok") == len(arrived)


def test_port_missing_at_start_is_retried_until_it_appears(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    link = tmp_path / "usb-REYAX_RYLR998-if00"
    metrics = Metrics()
    got = Collector()
    source = make_source(None, metrics, port=str(link), protocol="reyax")
    source.start(got)
    try:
        time.sleep(0.3)
        assert not source.connected()
        assert metrics.get("serial_port_errors_total", source="radio", kind="open") >= 2
        warnings = [r.getMessage() for r in caplog.records if "cannot open" in r.getMessage()]
        assert len(warnings) == 1 and "retrying" in warnings[0]  # said once, not once per attempt
        with PtySimulator("reyax", nodes=1, time_scale=6000, link_dir=str(tmp_path)) as sim:
            os.symlink(sim.path, link)
            wait_for(lambda: len(got.snapshot()) >= 5)
            assert source.connected()
    finally:
        source.stop()


def test_lock_keeps_a_second_reader_off_the_port() -> None:
    m1, m2 = Metrics(), Metrics()
    with PtySimulator("bridge", nodes=1, time_scale=600) as sim:
        first = make_source(sim, m1, name="a")
        second = make_source(sim, m2, name="b")
        first.start(Collector())
        try:
            wait_for(first.connected)
            second.start(Collector())
            try:
                wait_for(lambda: m2.get("serial_port_errors_total", source="b", kind="locked") >= 2)
                assert not second.connected()
            finally:
                second.stop()
        finally:
            first.stop()


def test_faults_every_good_record_arrives_and_rejects_are_counted() -> None:
    metrics = Metrics()
    got = Collector()
    with PtySimulator("bridge", nodes=4, time_scale=6000, bitflip_rate=0.1, truncate_rate=0.1,
                      garbage_rate=0.1, max_messages=300, seed=3) as sim:
        source = make_source(sim, metrics)
        source.start(got)
        try:
            assert sim.done.wait(20)
            ok = sim.records("ok")
            wait_for(lambda: len(got.snapshot()) >= len(ok))
            time.sleep(0.1)
        finally:
            source.stop()
        stats = dict(sim.stats)
    assert [u.f_cnt for u in got.snapshot()] == [r.seq for r in ok]
    rejected = sum(v for (name, labels, v) in metrics.counters()
                   if name == "serial_frames_total" and ("result", "ok") not in labels)
    assert stats["bitflip"] > 10 and stats["truncated"] > 10 and stats["garbage"] > 10
    assert rejected >= stats["bitflip"] + stats["truncated"]


def test_a_failing_consumer_loses_only_its_own_uplink(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    got = Collector()
    calls = {"n": 0}

    def flaky(uplink: RawUplink) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("consumer bug")
        got(uplink)

    with PtySimulator("reyax", nodes=2, time_scale=3000, max_messages=20) as sim:
        source = make_source(sim, metrics)
        source.start(flaky)
        try:
            wait_for(lambda: len(got.snapshot()) >= 19)
        finally:
            source.stop()
    assert metrics.get("serial_emit_errors_total", source="radio") == 1
    assert "consumer bug" in caplog.text

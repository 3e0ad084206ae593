"""The ``serial`` source: LoRa radio modules on a serial port (USB-UART), via firmware_bridge.

Opens ``port`` (a path or a ``/dev/serial/by-id/...`` link) under a PortSupervisor, so an
unplug or error closes, backs off and reopens forever without ending the daemon. On
every (re)open it applies ``configure`` with the module's commands on a helper thread
(errors are logged by name and counted, the port stays open). Every record gets one
outcome in ``serial_frames_total{source,result}``: ``ok`` or a reject reason (crc,
truncated, oversized, garbage, length, malformed, hex, orphan, version, no_address, ...).
Other metrics: ``serial_connected`` (gauge), ``serial_reopens_total``,
``serial_configure_errors_total``, ``serial_emit_errors_total`` (the consumer raised). ``received_at`` comes from ``context.extra["clock"]``
when given (the simulator passes its simulated clock), else ``time.time``.

With the daemon's durable ``emit`` (``gateway.ingest.accept``) the frames of one read are
written to the ingest log together (``emit.commit()``) before the pipeline sees them. A
radio cannot send a frame again, so ``redelivers`` is False: no duplicate check, and a
frame the log could not store (disk full) is still processed (counted as bypassed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from firmware_bridge.commands import AtCommander, BridgeCommander, ReplyBox
from firmware_bridge.drivers import Driver, make_driver
from firmware_bridge.drivers.base import ACCEPTED, ModuleUplink, RadioConfig, ReplyLine
from firmware_bridge.drivers.bridge import BridgeDriver, BridgeReply
from firmware_bridge.port_supervisor import PortSupervisor
from gateway.contracts import Emit, PluginContext
from gateway.hookspecs import hookimpl
from gateway.types import RadioMeta, RawUplink

log = logging.getLogger(__name__)
ADDRESSLESS = ("rak3172", "seeed_e5")


class RadioSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frequency_hz: int | None = Field(None, ge=137_000_000, le=1_020_000_000, description="Receive frequency in Hz.")
    spreading_factor: int | None = Field(None, ge=5, le=12, description="LoRa spreading factor.")
    bandwidth_khz: float | None = Field(None, gt=0, description="LoRa bandwidth in kHz (125, 250, 500, ...).")
    address: int | None = Field(None, ge=0, description="The module's own address (REYAX only).")


class Backoff(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initial: float = Field(0.5, gt=0, description="First wait in seconds before reopening a lost port.")
    max: float = Field(30.0, gt=0, description="Longest wait in seconds; each failure doubles the wait up to this.")


class SerialSourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: str = Field(description="Serial device path, e.g. /dev/ttyUSB0 or /dev/serial/by-id/usb-... (stable across replug).")
    protocol: Literal["bridge", "reyax", "rak3172", "seeed_e5"] = Field(
        "bridge", description="What the module speaks: our bridge board's frames, or a module's AT output.")
    baudrate: int = Field(115200, gt=0, description="UART speed (REYAX 115200, RAK3172 115200 or 9600, LoRa-E5 9600).")
    configure: RadioSettings | None = Field(None, description="Radio settings applied with the module's commands at every open; none = leave the module as it is.")
    reopen_backoff_s: Backoff = Field(default_factory=lambda: Backoff.model_validate({}), description="Back-off between reopen attempts.")
    lock: bool = Field(True, description="Take an exclusive lock on the port so no second process reads it.")
    address_prefix_bytes: int | None = Field(
        None, ge=0, le=8,
        description="For protocols without a sender address (rak3172, seeed_e5): leading payload bytes holding "
                    "the sender address, big-endian, stripped from the payload. Default 2 for those protocols, 0 "
                    "otherwise; 0 makes the device id the source name.")
    command_timeout_s: float = Field(2.0, gt=0, description="How long to wait for each command's reply.")


class SerialSource:
    """A Source (gateway.contracts) reading a radio module over a serial port."""

    def __init__(self, name: str, options: SerialSourceOptions, context: PluginContext) -> None:
        self.name = name
        self.options = options
        self.metrics = context.metrics
        clock = context.extra.get("clock")
        self._clock: Callable[[], float] = clock if callable(clock) else time.time
        self._cfg = RadioConfig(**options.configure.model_dump()) if options.configure else None
        if self._cfg is not None:
            self._validate(self._cfg)
        prefix = options.address_prefix_bytes
        self._prefix = prefix if prefix is not None else (2 if options.protocol in ADDRESSLESS else 0)
        self._driver: Driver = make_driver(options.protocol)
        self._published: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._emit: Emit | None = None
        self.redelivers = False  # see the module docstring
        self._at_replies: ReplyBox[ReplyLine] = ReplyBox()
        self._bridge_replies: ReplyBox[BridgeReply] = ReplyBox()
        self.configured = threading.Event()
        self.supervisor = PortSupervisor(
            options.port, options.baudrate, self._on_data, on_open=self._on_open,
            backoff_initial_s=options.reopen_backoff_s.initial, backoff_max_s=options.reopen_backoff_s.max,
            lock=options.lock, metrics=self.metrics, name=name,
        )
        self._commander = self._make_commander()

    def _validate(self, cfg: RadioConfig) -> None:
        driver = make_driver(self.options.protocol)
        if isinstance(driver, BridgeDriver):
            driver.validate(cfg)
        else:
            driver.configure_commands(cfg)

    # --- Source contract --------------------------------------------------------
    def start(self, emit: Emit) -> None:
        self._emit = emit
        self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()

    def connected(self) -> bool:
        return self.supervisor.connected()

    # --- commands ---------------------------------------------------------------
    @property
    def commander(self) -> AtCommander | BridgeCommander:
        """Commands to the module on this port (bridge: ping/set_*; AT modules: command())."""
        return self._commander

    def _make_commander(self) -> AtCommander | BridgeCommander:
        if self.options.protocol == "bridge":
            return BridgeCommander(self.supervisor.write, self._bridge_replies)
        driver = make_driver(self.options.protocol)
        assert not isinstance(driver, BridgeDriver)
        return AtCommander(driver, self.supervisor.write, self._at_replies)

    # --- reader thread ----------------------------------------------------------
    def _on_open(self) -> None:
        with self._lock:
            self._publish_counts()
            self._driver = make_driver(self.options.protocol)  # a new port: no partial record carries over
            self._published = Counter()
        self.configured.clear()
        threading.Thread(target=self._configure, name=f"serial-{self.name}-configure", daemon=True).start()

    def _configure(self) -> None:
        if self._cfg is None:
            self.configured.set()
            return
        try:
            sent = self.commander.configure(self._cfg, self.options.command_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure is reported; the port stays open
            self.metrics.inc("serial_configure_errors_total", source=self.name)
            log.error("serial %s: configuring %s failed: %s", self.name, self.options.port, exc)
            return
        log.info("serial %s: configured (%s)", self.name, ", ".join(sent))
        self.configured.set()

    def _on_data(self, data: bytes) -> None:
        with self._lock:
            events = self._driver.feed(data)
            self._publish_counts()
        uplinks = 0
        for event in events:
            if isinstance(event, ModuleUplink):
                self._uplink(event)
                uplinks += 1
            elif isinstance(event, BridgeReply):
                self._bridge_replies.offer(event)
            else:
                self._at_replies.offer(event)
        commit = getattr(self._emit, "commit", None)
        if uplinks and callable(commit):
            commit()  # the frames of this read go to the ingest log together (one fsync)

    def _publish_counts(self) -> None:
        for result, total in self._driver.counts.items():
            delta = total - self._published[result]
            if delta and result not in ACCEPTED[1:]:
                self.metrics.inc("serial_frames_total", delta, source=self.name, result=result)
            self._published[result] = total

    def _uplink(self, up: ModuleUplink) -> None:
        address, payload = up.address, up.payload
        if address is None:
            if self._prefix == 0:
                address = self.name
            elif len(payload) < self._prefix:
                self.metrics.inc("serial_frames_total", source=self.name, result="no_address")
                self.metrics.inc("serial_frames_total", -1, source=self.name, result="ok")
                return
            else:
                address, payload = str(int.from_bytes(payload[: self._prefix], "big")), payload[self._prefix:]
        cfg = self._cfg or RadioConfig()
        radio = RadioMeta(
            rssi=up.rssi_dbm, snr=up.snr_db,
            spreading_factor=up.spreading_factor if up.spreading_factor is not None else cfg.spreading_factor,
            frequency_hz=up.frequency_hz if up.frequency_hz is not None else cfg.frequency_hz,
            bandwidth_hz=round(cfg.bandwidth_khz * 1000) if cfg.bandwidth_khz else None,
        )
        uplink = RawUplink(device_id=address, received_at=self._clock(), payload=payload, f_cnt=up.seq,
                           radio=radio, source=self.name, shape=self.options.protocol)
        if self._emit is None:
            return
        try:
            self._emit(uplink)
        except Exception:
            self.metrics.inc("serial_emit_errors_total", source=self.name)
            log.exception("serial %s: emit failed for an uplink from %s", self.name, address)


def _factory(name: str, options: SerialSourceOptions, context: PluginContext) -> SerialSource:
    return SerialSource(name, options, context)


@hookimpl
def lora_gateway_register_sources(register: Any) -> None:
    register("serial", _factory, SerialSourceOptions)

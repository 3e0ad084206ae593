"""Keeps one serial port open for as long as it runs: open, read, and on unplug or error
close, back off, reopen, forever (until ``stop``).

The port is opened by path, which may be a stable symlink such as
``/dev/serial/by-id/usb-...``; it is re-resolved on every open, so a device that comes
back under another ``/dev/ttyUSB*`` (or ``/dev/pts/*``) is found again. With ``lock``
the port is opened with an exclusive ``flock`` (pyserial ``exclusive=True``): a second
process cannot read the same port, and the supervisor that loses keeps retrying.

Callbacks run on the supervisor's reader thread and must not block: ``on_data(bytes)``
for every read, ``on_open()`` after each successful open, ``on_close(reason)`` after each
loss. Metrics (labels ``source=<name>``): ``serial_connected`` gauge (1/0),
``serial_reopens_total`` (opens after the first), ``serial_port_errors_total{kind}``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

import serial

log = logging.getLogger(__name__)
READ_TIMEOUT_S = 0.05
STABLE_AFTER_S = 2.0



class PortMetrics(Protocol):
    """Where the supervisor reports its counters and gauges (the gateway's Metrics fits)."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...

    def set(self, name: str, value: float, **labels: str) -> None: ...


class _NoMetrics:
    """Discards every figure: for tools that run a port without a metrics registry."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        return None

    def set(self, name: str, value: float, **labels: str) -> None:
        return None


class PortNotOpen(Exception):
    """A write while the port is closed (unplugged, or not yet opened)."""


class PortSupervisor:
    """See the module docstring. ``start`` returns at once; ``stop`` joins the thread."""

    def __init__(
        self,
        port: str,
        baudrate: int,
        on_data: Callable[[bytes], None],
        *,
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[str], None] | None = None,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        lock: bool = True,
        metrics: PortMetrics | None = None,
        name: str = "serial",
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.name = name
        self.opens = 0
        self._on_data = on_data
        self._on_open = on_open
        self._on_close = on_close
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._lock = lock
        self._metrics: PortMetrics = metrics if metrics is not None else _NoMetrics()
        self._serial: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._metrics.set("serial_connected", 0, source=self.name)
        self._thread = threading.Thread(target=self._run, name=f"serial-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def connected(self) -> bool:
        return self._serial is not None

    def write(self, data: bytes) -> None:
        """Write all of ``data``; raises PortNotOpen when the port is not open or fails."""
        with self._write_lock:
            ser = self._serial
            if ser is None:
                raise PortNotOpen(f"{self.port} is not open")
            try:
                ser.write(data)
            except (serial.SerialException, OSError) as exc:
                raise PortNotOpen(f"write to {self.port} failed: {exc}") from exc

    def _run(self) -> None:
        delay = self._backoff[0]
        failing_since: str | None = None
        while not self._stop.is_set():
            ser = self._open()
            if isinstance(ser, str):
                if ser != failing_since:
                    log.warning("serial %s: cannot open %s: %s; retrying with back-off up to %.1f s",
                                self.name, self.port, ser, self._backoff[1])
                    failing_since = ser
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            failing_since = None
            opened_at = time.monotonic()
            reason = self._serve(ser)
            if time.monotonic() - opened_at >= STABLE_AFTER_S:
                delay = self._backoff[0]
            if reason is not None:
                log.warning("serial %s: lost %s (%s); reopening in %.1f s", self.name, self.port, reason, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])

    def _open(self) -> serial.Serial | str:
        real = os.path.realpath(self.port)
        try:
            ser = serial.Serial(self.port, self.baudrate, timeout=READ_TIMEOUT_S, exclusive=self._lock or None)
        except (serial.SerialException, OSError, ValueError) as exc:
            kind = "locked" if "lock" in str(exc).lower() else "open"
            self._metrics.inc("serial_port_errors_total", source=self.name, kind=kind)
            return "in use by another process (locked)" if kind == "locked" else str(exc)
        with self._write_lock:
            self._serial = ser
        self.opens += 1
        if self.opens > 1:
            self._metrics.inc("serial_reopens_total", source=self.name)
        self._metrics.set("serial_connected", 1, source=self.name)
        log.info("serial %s: opened %s (%s) at %d baud", self.name, self.port, real, self.baudrate)
        if self._on_open is not None:
            try:
                self._on_open()
            except Exception:
                log.exception("serial %s: open callback failed", self.name)
                self._metrics.inc("serial_callback_errors_total", source=self.name)
        return ser

    def _serve(self, ser: serial.Serial) -> str | None:
        """Read until stop (returns None) or an error (returns the reason)."""
        reason: str | None = None
        try:
            while not self._stop.is_set():
                data = ser.read(ser.in_waiting or 1)
                if data:
                    try:
                        self._on_data(data)
                    except Exception:
                        log.exception("serial %s: data callback failed", self.name)
                        self._metrics.inc("serial_callback_errors_total", source=self.name)
        except (serial.SerialException, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            self._metrics.inc("serial_port_errors_total", source=self.name, kind="read")
        finally:
            with self._write_lock:
                self._serial = None
            self._metrics.set("serial_connected", 0, source=self.name)
            ser.close()
            if self._on_close is not None:
                self._on_close(reason or "stopped")
        return reason

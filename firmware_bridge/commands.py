"""Commands to a module or bridge board: one at a time, a reply or a typed error.

Both commanders write through ``write(bytes)`` (the port supervisor's) and read replies
that the port's reader thread puts on ``replies`` (bounded; ``offer`` drops the oldest
when full). ``AtCommander.command`` returns the reply lines or raises ModuleError (the
module said no, with the code's name) or CommandTimeout; ``BridgeCommander`` does the
same for bridge frames (BridgeCommandError carries the Status).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from firmware_bridge.drivers import AtDriver
from firmware_bridge.drivers.base import (
    CommandTimeout,
    ModuleError,
    RadioConfig,
    ReplyLine,
)
from firmware_bridge.drivers.bridge import BridgeReply
from firmware_bridge.frame_codec import Frame, FrameType, Status, encode_frame

T = TypeVar("T")
Write = Callable[[bytes], None]


class ReplyBox(Generic[T]):
    """A bounded, thread-safe queue of replies; the reader offers, a commander takes."""

    def __init__(self, size: int = 64) -> None:
        self._q: queue.Queue[T] = queue.Queue(size)
        self.dropped = 0

    def offer(self, item: T) -> None:
        while True:
            try:
                self._q.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def take(self, timeout_s: float) -> T | None:
        try:
            return self._q.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None

    def clear(self) -> None:
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return


class AtCommander:
    """Sends AT commands to a module driven by ``driver`` and checks every reply."""

    def __init__(self, driver: AtDriver, write: Write, replies: ReplyBox[ReplyLine]) -> None:
        self.driver = driver
        self._write = write
        self._replies = replies
        self._lock = threading.Lock()

    def command(self, command: str, timeout_s: float = 2.0) -> list[str]:
        """Send ``command`` (CR LF added); return its reply lines, last one final."""
        with self._lock:
            self._replies.clear()
            self._write(command.encode("ascii") + b"\r\n")
            deadline = time.monotonic() + timeout_s
            lines: list[str] = []
            while True:
                reply = self._replies.take(deadline - time.monotonic())
                if reply is None:
                    raise CommandTimeout(command, timeout_s, lines)
                lines.append(reply.text)
                if self.driver.is_final(command, reply.text):
                    self.driver.check_reply(command, lines)
                    return lines

    def configure(self, cfg: RadioConfig, timeout_s: float = 2.0) -> list[str]:
        """Apply ``cfg`` command by command; returns the commands sent. Stops at the first error."""
        commands = self.driver.configure_commands(cfg)
        for command in commands:
            self.command(command, timeout_s)
        return commands


class BridgeCommandError(ModuleError):
    """The bridge board answered a command with a non-OK Status."""

    def __init__(self, command: str, status: int) -> None:
        try:
            name = Status(status).name
        except ValueError:
            name = f"STATUS_{status}"
        super().__init__(command, str(status), name)
        self.status = status


class BridgeCommander:
    """Commands to the bridge board: PING, SET_FREQUENCY, SET_SPREADING_FACTOR, SET_BANDWIDTH."""

    def __init__(self, write: Write, replies: ReplyBox[BridgeReply]) -> None:
        self._write = write
        self._replies = replies
        self._lock = threading.Lock()
        self._seq = 0

    def request(self, ftype: FrameType, body: bytes = b"", timeout_s: float = 1.0) -> BridgeReply:
        """Send one command frame and wait for its reply (same type and seq)."""
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFF
            seq = self._seq
            self._replies.clear()
            self._write(encode_frame(Frame(ftype, seq, body)))
            deadline = time.monotonic() + timeout_s
            while True:
                reply = self._replies.take(deadline - time.monotonic())
                if reply is None:
                    raise CommandTimeout(ftype.name, timeout_s, [])
                if reply.command == ftype and reply.seq == seq:
                    if reply.status != Status.OK:
                        raise BridgeCommandError(ftype.name, reply.status)
                    return reply

    def ping(self, timeout_s: float = 1.0) -> float:
        """Round-trip time in seconds."""
        t0 = time.monotonic()
        self.request(FrameType.PING, b"", timeout_s)
        return time.monotonic() - t0

    def set_frequency(self, hz: int, timeout_s: float = 1.0) -> None:
        self.request(FrameType.SET_FREQUENCY, hz.to_bytes(4, "big"), timeout_s)

    def set_spreading_factor(self, sf: int, timeout_s: float = 1.0) -> None:
        self.request(FrameType.SET_SPREADING_FACTOR, bytes([sf]), timeout_s)

    def set_bandwidth(self, khz: float, timeout_s: float = 1.0) -> None:
        self.request(FrameType.SET_BANDWIDTH, round(khz * 1000).to_bytes(4, "big"), timeout_s)

    def configure(self, cfg: RadioConfig, timeout_s: float = 1.0) -> list[str]:
        """Apply ``cfg``; returns the names of the commands sent."""
        sent = ["PING"]
        self.ping(timeout_s)
        if cfg.frequency_hz is not None:
            self.set_frequency(cfg.frequency_hz, timeout_s)
            sent.append("SET_FREQUENCY")
        if cfg.spreading_factor is not None:
            self.set_spreading_factor(cfg.spreading_factor, timeout_s)
            sent.append("SET_SPREADING_FACTOR")
        if cfg.bandwidth_khz is not None:
            self.set_bandwidth(cfg.bandwidth_khz, timeout_s)
            sent.append("SET_BANDWIDTH")
        return sent

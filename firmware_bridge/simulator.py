"""A virtual radio module on a pseudo-terminal, with virtual sensor nodes behind it.

``PtySimulator`` opens a pty, keeps a stable symlink to its slave (``sim.path``, like
``/dev/serial/by-id``), and on a background thread writes what the chosen module prints
for every reading of every node, answers the module's commands, paces output at ``baud``
(10 bits a byte) and injects faults on request: bit flips, truncated records, garbage
bursts and unplugs (the pty closed and a new one made, the symlink re-pointed).

Contracts:
- Output is written only while a program has the port open; while none has, the virtual
  clock stops (as if the module waited), so readings are never dropped for lack of a
  reader. Only a record cut by an unplug (the in-flight one) is lost.
- Readings are deterministic given ``seed``; ``received_at``-style times come from
  ``clock()``, the simulated time (``time_scale`` simulated seconds per real second).
- ``stats`` counts what was sent by kind ("ok", "bitflip", "truncated", "unplug_cut",
  "garbage" bursts, "unplugs", "replies") and ``records(kind)`` copies the log of sent
  records (the newest 200,000).
For protocols without a sender address (rak3172, seeed_e5) each payload starts with the
node address as 2 big-endian bytes (the serial source's ``address_prefix_bytes`` = 2).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import select
import struct
import tempfile
import termios
import threading
import time
import tty
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from firmware_bridge.sensor_nodes import FaultSpec, NodeReading, SensorNode, schedule
from firmware_bridge.virtual_modules import VirtualModule, make_virtual_module

ADDRESSLESS = ("rak3172", "seeed_e5")
SETTLE_S = 0.05
BURST_S = 0.005


@dataclass(frozen=True, slots=True)
class SentRecord:
    """One record the simulator put on the line (or cut, for "unplug_cut")."""

    device_id: str
    node: int
    k: int
    seq: int
    payload: bytes
    time_s: float
    kind: str


class PtySimulator:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        protocol: str = "bridge",
        nodes: int = 3,
        *,
        interval_s: float = 60.0,
        time_scale: float = 600.0,
        baud: int = 115200,
        seed: int = 0,
        faults: Iterable[FaultSpec] = (),
        bitflip_rate: float = 0.0,
        truncate_rate: float = 0.0,
        garbage_rate: float = 0.0,
        unplug_every_s: float | None = None,
        unplug_gap_s: float = 0.2,
        full_speed: bool = False,
        max_messages: int | None = None,
        start_time: float | None = None,
        link_dir: str | None = None,
        old_format: bool = False,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.protocol = protocol
        self.module: VirtualModule = make_virtual_module(protocol, **({"old_format": True} if old_format else {}))
        self.interval_s = interval_s
        self.time_scale = time_scale
        self.baud = baud
        self.full_speed = full_speed
        self.max_messages = max_messages
        self.rates = (bitflip_rate, truncate_rate, garbage_rate)
        self.unplug_every_s = unplug_every_s
        self.unplug_gap_s = unplug_gap_s
        self.start_time = time.time() if start_time is None else start_time
        self.nodes = [SensorNode(i, seed, interval_s, list(faults)) for i in range(1, nodes + 1)]
        self.stats: Counter[str] = Counter()
        self.sent: deque[SentRecord] = deque(maxlen=200_000)
        self._sent_lock = threading.Lock()
        self.done = threading.Event()
        self._hold = threading.Event()
        self._drained = threading.Event()
        self._rng = random.Random(f"faults:{seed}")
        self._tmp = None if link_dir else tempfile.TemporaryDirectory(prefix="lora-sim-")
        self.path = str(Path(link_dir or self._tmp.name) / f"{protocol}-module")  # type: ignore[union-attr]
        self.device = ""
        self._master = -1
        self._stop = threading.Event()
        self._unplug_request = threading.Event()
        self._thread: threading.Thread | None = None
        self._sim_elapsed = 0.0
        self._seq = 0

    # --- public API -------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Create the pty and the symlink; start the background thread. Returns at once."""
        self._open_pty()
        self._thread = threading.Thread(target=self._run, name=f"pty-sim-{self.protocol}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, close the pty and remove the symlink; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._close_pty()
        if os.path.islink(self.path):
            os.unlink(self.path)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def clock(self) -> float:
        """Simulated time now (UNIX seconds)."""
        return self.start_time + self._sim_elapsed

    def unplug(self) -> None:
        """Ask for one unplug at the next record (tests use it for exact timing)."""
        self._unplug_request.set()

    def hold(self) -> None:
        """Send no more readings (commands are still answered)."""
        self._hold.set()

    def wait_drained(self, timeout_s: float = 10.0) -> bool:
        """hold(), then wait until everything written has been read by the program on the
        port; True when it has. After it, ``records()`` is final."""
        self.hold()
        return self._drained.wait(timeout_s)

    def records(self, kind: str | None = "ok") -> list[SentRecord]:
        """A copy of the sent records of ``kind`` (None: all), oldest first."""
        with self._sent_lock:
            return [r for r in self.sent if kind is None or r.kind == kind]

    def _log(self, record: SentRecord) -> None:
        with self._sent_lock:
            self.sent.append(record)

    # --- pty handling -----------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        self.device = os.ttyname(slave)
        os.close(slave)  # while no program holds the slave, the master polls POLLHUP
        os.set_blocking(master, False)
        self._master = master
        tmp_link = f"{self.path}.new"
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(self.device, tmp_link)
        os.replace(tmp_link, self.path)

    def _close_pty(self) -> None:
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def _reader_present(self) -> bool:
        p = select.poll()
        p.register(self._master, select.POLLIN)
        events = p.poll(0)
        return not any(ev & select.POLLHUP for _, ev in events)

    def _unread(self) -> int:
        """Bytes written but not yet read by the program on the slave side."""
        try:
            fd = os.open(self.device, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return 0
        try:
            return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
        finally:
            os.close(fd)

    # --- the loop ---------------------------------------------------------------
    def _run(self) -> None:
        readings: Iterator[NodeReading] = schedule(self.nodes, self.start_time, self.interval_s)
        nxt = next(readings)
        out = bytearray()
        wire_free_at = 0.0
        was_present = False
        last = time.monotonic()
        last_unplug = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            now = time.monotonic()
            present = self._reader_present()
            if not present:
                was_present = False
                last = now
                self._stop.wait(0.01)
                continue
            if not was_present:
                was_present = True
                self._stop.wait(SETTLE_S)  # let the opener set its terminal mode
                last = now = time.monotonic()
                last_unplug = max(last_unplug, now - (self.unplug_every_s or 0) / 2)
            self._sim_elapsed += (now - last) * self.time_scale
            last = now
            self._serve_commands(out)
            finished = self._hold.is_set() or (self.max_messages is not None and sent >= self.max_messages)
            if finished and not out:
                self.done.set()
                if not self._drained.is_set() and self._unread() == 0:
                    self._drained.set()
            due = self.full_speed or self.clock() >= nxt.time_s
            unplug_due = self._unplug_request.is_set() or (
                self.unplug_every_s is not None and now - last_unplug >= self.unplug_every_s)
            if not out and not finished and due and now >= wire_free_at and unplug_due:
                self._unplug(nxt)
                nxt = next(readings)
                sent += 1
                last_unplug = time.monotonic()
                was_present = False
                continue
            # queue what is due, up to BURST_S of line time, so pacing does not hinge on
            # sub-millisecond sleeps at high baud rates; the next burst is handed to the pty
            # up to BURST_S before the line drains (a UART's transmit FIFO), so a late wake-up
            # does not leave the line idle. ``wire_free_at`` advances by every byte's line
            # time, so the long-run rate never exceeds baud / 10 bytes/s (by at most one burst).
            budget = self.baud / 10 * BURST_S
            ahead = wire_free_at - BURST_S
            while (not unplug_due and not finished and now >= ahead and len(out) < budget
                   and (self.full_speed or self.clock() >= nxt.time_s)):
                out += self._render(nxt)
                nxt = next(readings)
                sent += 1
                finished = self._hold.is_set() or (self.max_messages is not None and sent >= self.max_messages)
            if out and now >= ahead:
                written = self._write(out)
                del out[:written]
                wire_free_at = max(wire_free_at, now) + written * 10 / self.baud
            line_busy = max(0.0, wire_free_at - BURST_S - time.monotonic())
            if out and not line_busy:
                self._wait_io(True, 0.02)  # the reader is behind: wait until the pty takes more
            elif out or (due and not finished):
                self._wait_io(False, min(0.02, line_busy))
            elif not finished:
                self._wait_io(False, min(0.02, max(0.0, (nxt.time_s - self.clock()) / self.time_scale)))
            else:
                self._wait_io(False, 0.02)

    def _wait_io(self, want_write: bool, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, waking early for a command (or, with want_write, room to write)."""
        if timeout_s <= 0:
            return
        p = select.poll()
        p.register(self._master, select.POLLIN | (select.POLLOUT if want_write else 0))
        p.poll(timeout_s * 1000)

    def _write(self, data: bytearray) -> int:
        try:
            return os.write(self._master, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EAGAIN):
                return 0
            raise

    def _serve_commands(self, out: bytearray) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        reply = self.module.feed(data)
        if reply:
            self.stats["replies"] += 1
            out[0:0] = reply  # replies go before queued readings

    def _render(self, r: NodeReading) -> bytes:
        record, wire = self._record(r)
        bitflip, truncate, garbage = self.rates
        kind = "ok"
        roll = self._rng.random()
        if roll < bitflip:
            kind = "bitflip"
            buf = bytearray(wire)
            pos = self._rng.randrange(len(buf))
            buf[pos] ^= 1 << self._rng.randrange(8)
            wire = bytes(buf)
        elif roll < bitflip + truncate:
            kind = "truncated"
            wire = wire[: self._rng.randrange(1, len(wire) - 1)]
        prefix = b""
        if self._rng.random() < garbage:
            self.stats["garbage"] += 1
            prefix = bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(1, 64)))
            if self.protocol != "bridge":
                prefix += b"\r\n"
        self.stats[kind] += 1
        self._log(SentRecord(record.device_id, record.node, record.k, record.seq, record.payload,
                             record.time_s, kind))
        return prefix + wire

    def _record(self, r: NodeReading) -> tuple[SentRecord, bytes]:
        node = r.node
        link = random.Random(f"link:{node.seed}:{node.index}:{r.k}")
        rssi = -60.0 - 7 * node.index + link.gauss(0, 2)
        snr = 9.0 - node.index + link.gauss(0, 1)
        payload = r.payload
        wire_payload = node.address.to_bytes(2, "big") + payload if self.protocol in ADDRESSLESS else payload
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        wire = self.module.render(node.address, seq, wire_payload, rssi, snr)
        return SentRecord(str(node.address), node.index, r.k, seq, payload, r.time_s, "ok"), wire

    def _unplug(self, r: NodeReading) -> None:
        deadline = time.monotonic() + 2.0
        while self._unread() > 0 and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.005)
        record, wire = self._record(r)
        half = wire[: max(1, len(wire) // 2)]
        self._write(bytearray(half))
        time.sleep(0.02)
        self.stats["unplug_cut"] += 1
        self._log(SentRecord(record.device_id, record.node, record.k, record.seq, record.payload,
                             record.time_s, "unplug_cut"))
        self._close_pty()
        self._stop.wait(self.unplug_gap_s)
        self._open_pty()
        self.stats["unplugs"] += 1
        self._unplug_request.clear()

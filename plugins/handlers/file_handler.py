"""``file`` alert handler: one JSON object per line, fsync'd before ``deliver`` returns.

The file is opened for appending in ``start`` (parent directories created). When
``max_bytes`` is set, the file is rotated once it would grow past it: ``path`` becomes
``path.1`` (one older generation kept, the previous ``path.1`` is replaced). A write or
fsync error (disk full, read-only file system) raises DeliveryError, so the outbox keeps
the alert and retries.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict, Field

from gateway.contracts import DeliveryError, PluginContext
from gateway.hookspecs import hookimpl
from gateway.types import Alert, Reading

log = logging.getLogger(__name__)


class FileHandlerOptions(BaseModel):
    """Options of the ``file`` handler."""

    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="JSON-lines file the alerts are appended to; a relative path is "
                                   "taken under the gateway's state directory.")
    fsync: bool = Field(True, description="fsync after every alert so a power cut cannot lose a "
                                          "line the outbox already considers delivered.")
    max_bytes: int | None = Field(None, ge=4096, description="Rotate to <path>.1 when the file would "
                                                             "grow past this size; unset never rotates.")


class FileHandler:
    """Appends ``alert.as_dict()`` as JSON lines (with ``gateway_id`` added)."""

    def __init__(self, name: str, options: FileHandlerOptions, gateway_id: str, state_dir: str) -> None:
        self.name = name
        self.options = options
        self.gateway_id = gateway_id
        self.path = options.path if options.path.is_absolute() else Path(state_dir) / options.path
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Open the file for appending. Never raises: when it cannot be opened (read-only or
        missing mount) the error is logged and every ``deliver`` tries again, failing with
        DeliveryError until it works, so the outbox keeps the alerts meanwhile."""
        with self._lock:
            if self._fh is None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fh = open(self.path, "a", encoding="utf-8")
                except OSError as exc:
                    log.error("%s: cannot open %s yet (%s); alerts stay in the outbox until it can",
                              self.name, self.path, exc)

    def deliver(self, alert: Alert) -> None:
        """Append one line and (by default) fsync; raises DeliveryError on any I/O error."""
        line = json.dumps({**alert.as_dict(), "gateway_id": self.gateway_id}, separators=(",", ":"),
                          default=str) + "\n"
        with self._lock:
            try:
                if self._fh is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fh = open(self.path, "a", encoding="utf-8")
                if self.options.max_bytes and self._fh.tell() + len(line.encode()) > self.options.max_bytes:
                    self._rotate()
                assert self._fh is not None
                self._fh.write(line)
                self._fh.flush()
                if self.options.fsync:
                    os.fsync(self._fh.fileno())
            except OSError as exc:
                self._close_quietly()
                raise DeliveryError(f"cannot write {self.path}: {exc}") from exc

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        os.replace(self.path, f"{self.path}.1")
        self._fh = open(self.path, "a", encoding="utf-8")

    def _close_quietly(self) -> None:
        """After an I/O error: drop the handle so the next attempt reopens the file."""
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                return  # the handle is gone either way; the error was already reported

    def on_reading(self, reading: Reading) -> None:
        return None

    def stop(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def make_file_handler(name: str, options: FileHandlerOptions, context: PluginContext) -> FileHandler:
    return FileHandler(name, options, context.gateway_id, context.state_dir)


@hookimpl
def lora_gateway_register_alert_handlers(register: Callable[..., None]) -> None:
    register("file", make_file_handler, FileHandlerOptions)

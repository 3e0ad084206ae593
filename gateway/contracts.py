"""The small contracts sources and alert handlers implement.

A source receives uplinks on its own thread(s) and hands each one to ``emit``; it never
blocks the caller of ``start``. An alert handler delivers one alert at a time and raises
on failure (the outbox keeps the alert and retries later); it must not swallow errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from gateway.metrics import Metrics
from gateway.types import Alert, RawUplink, Reading

Emit = Callable[[RawUplink], None]


@dataclass
class PluginContext:
    """What a source or handler factory is given besides its own options."""

    metrics: Metrics
    gateway_id: str = "lora-gateway"
    state_dir: str = "."
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    name: str

    def start(self, emit: Emit) -> None:
        """Begin receiving; call ``emit(uplink)`` from any thread. Returns at once."""

    def stop(self) -> None:
        """Stop receiving and release the transport; idempotent."""

    def connected(self) -> bool:
        """True while the transport (broker, serial port) is up."""


class DeliveryError(Exception):
    """An alert handler could not deliver; the message says why (retried later)."""


class PermanentDeliveryError(DeliveryError):
    """The receiver refused this alert for good (e.g. HTTP 400/404): retrying cannot help.

    The dispatcher does not retry it: the delivery is dropped, counted
    (``delivery_failures_total{reason=permanent}``, ``outbox_dropped_total``) and logged.
    """


@runtime_checkable
class AlertHandler(Protocol):
    name: str

    def start(self) -> None:
        """Connect or open what delivery needs; must not block for long."""

    def deliver(self, alert: Alert) -> None:
        """Deliver one alert or raise DeliveryError. Called from the handler's own thread."""

    def on_reading(self, reading: Reading) -> None:
        """Best-effort telemetry hook (dashboards); may do nothing. Never raises."""

    def stop(self) -> None:
        """Flush and close; idempotent."""

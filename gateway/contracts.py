"""The small contracts sources and alert handlers implement.

A source receives uplinks on its own thread(s) and hands each one to ``emit``; it never
blocks the caller of ``start``. An alert handler delivers one alert at a time and raises
on failure (the outbox keeps the alert and retries later); it must not swallow errors.

Optional handler capabilities are Protocols too, checked with ``isinstance`` where the core
uses them: ``DurableTelemetry`` (readings through the outbox), ``ReconnectNotifier`` (the
dispatcher retries at once when a connection comes back). ``ReadingObserver`` is what the
pipeline calls for every accepted reading (telemetry fan-out, recorder, test probes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from gateway.metrics import Metrics
from gateway.types import Alert, RawUplink, Reading

if TYPE_CHECKING:
    from gateway.ingest.profiles import ProfileConfig

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


@runtime_checkable
class DurableTelemetry(Protocol):
    """A handler that wants readings through the durable outbox (at-least-once telemetry)."""

    @property
    def durable_telemetry(self) -> bool:
        """True when readings should go through the outbox to ``deliver_reading``."""

    def deliver_reading(self, reading: Reading) -> None:
        """Deliver one reading taken from the outbox, or raise DeliveryError."""


@runtime_checkable
class ReconnectNotifier(Protocol):
    """A handler whose connection reports (re)connects, so a backlog can go out at once."""

    def add_reconnect_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (on the connection's thread) each time the connection comes up."""


@runtime_checkable
class ReadingObserver(Protocol):
    """Sees every reading the pipeline accepted, on the pipeline thread; must not block
    (queue the work and count what it has to drop)."""

    def observe_reading(self, reading: Reading, profile: "ProfileConfig", uplink: RawUplink) -> None:
        """Take note of one accepted reading and the uplink it came from."""


@runtime_checkable
class ScoreObserver(Protocol):
    """Sees every window score the alert policy decides on, on the pipeline thread; must
    not block (the status page keeps a bounded copy)."""

    def observe_score(self, device_id: str, timestamp: float, score: float, details: dict[str, Any]) -> None:
        """Take note of one window's score (``details``: top ``channel``, per-channel scores)."""


@runtime_checkable
class PartitionedSource(Protocol):
    """A source whose devices move between gateways (a cluster worker): it hands device
    state over through the pipeline (``gateway.pipeline.handoff.PipelineHandoff``) and
    reports which share of the feed it owns."""

    def bind_pipeline(self, handoff: Any) -> None:
        """Called once, before ``start``, with the gateway's ``PipelineHandoff``."""

    def health_details(self) -> dict[str, Any]:
        """What ``/health`` shows under ``cluster.<source name>`` (worker id, partitions owned)."""

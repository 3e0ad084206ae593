"""The records that flow through the pipeline.

RawUplink (from a source) -> Reading (after decoding) -> Alert (from the alert policy).
All three are plain, immutable-by-convention dataclasses with slots, cheap to create at
thousands per second. Timestamps are UNIX seconds (float, UTC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class RadioMeta:
    """Radio metadata of one received LoRa packet; every field optional (None = unknown)."""

    rssi: float | None = None
    snr: float | None = None
    spreading_factor: int | None = None
    frequency_hz: int | None = None
    bandwidth_hz: int | None = None
    gateway_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


@dataclass(slots=True)
class RawUplink:
    """One uplink as a source received it, before decoding.

    device_id: DevEUI (16 lower-case hex digits) for LoRaWAN, the module address for radio
    modules on serial. ``decoded`` holds the object a network server already decoded
    (ChirpStack ``object``, TTS ``decoded_payload``), or None. ``source`` names the source
    instance, ``shape`` the wire shape it was parsed from (e.g. ``chirpstack_v4``).
    ``dedup_id`` is the network server's id of this uplink (ChirpStack ``deduplicationId``),
    which identifies a redelivery; ``seq`` is its position in the ingest log (0: not
    logged; ``gateway.ingest.log``).
    """

    device_id: str
    received_at: float
    payload: bytes
    f_port: int | None = None
    f_cnt: int | None = None
    radio: RadioMeta = field(default_factory=RadioMeta)
    decoded: dict[str, Any] | None = None
    device_name: str | None = None
    source: str = ""
    shape: str = ""
    dedup_id: str | None = None
    seq: int = 0


@dataclass(slots=True)
class Reading:
    """Decoded values of one uplink: ``values`` maps channel name to a finite float."""

    device_id: str
    timestamp: float
    values: dict[str, float]
    radio: RadioMeta = field(default_factory=RadioMeta)
    f_cnt: int | None = None
    device_name: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for name, value in self.values.items():
            if not math.isfinite(value):
                raise ValueError(f"channel {name!r} is not a finite number: {value!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (inverse: ``from_dict``)."""
        return {"device_id": self.device_id, "timestamp": self.timestamp, "values": self.values,
                "radio": self.radio.as_dict(), "f_cnt": self.f_cnt,
                "device_name": self.device_name, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Reading":
        return cls(device_id=data["device_id"], timestamp=data["timestamp"], values=data["values"],
                   radio=RadioMeta(**data.get("radio", {})), f_cnt=data.get("f_cnt"),
                   device_name=data.get("device_name"), source=data.get("source", ""))


AlertState = Literal["raised", "cleared"]


@dataclass(slots=True)
class Alert:
    """One alert event: a raise or a clear of (device_id, kind).

    ``key`` is the idempotency key: the same event always carries the same key (it is
    derived from device, kind, state and the time the episode started), so receivers can
    drop duplicates that at-least-once delivery may produce. ``replay`` is True when the
    outbox delivers it again after an outage.
    """

    device_id: str
    kind: str
    state: AlertState
    severity: Literal["info", "warning", "critical"]
    timestamp: float
    message: str
    key: str
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    replay: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "state": self.state,
            "severity": self.severity,
            "timestamp": self.timestamp,
            "message": self.message,
            "key": self.key,
            "score": self.score,
            "details": self.details,
            "replay": self.replay,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Alert":
        return cls(**data)


class DecodeError(ValueError):
    """A payload a decoder claimed but could not decode; the message is the reason.

    Convention: ``"reason"`` or ``"reason: detail"``; ``reason`` (the part before the first
    colon) is a short code fit for a metrics label.
    """

    @property
    def reason(self) -> str:
        return str(self).split(":", 1)[0].strip() or "decode_error"

"""Deterministic virtual field sensors and their Cayenne LPP payloads.

Each node reports every ``interval_s`` simulated seconds: air temperature with a diurnal
cycle (channel 1, LPP 0x67, 0.1 °C signed), relative humidity that moves against it
(channel 2, 0x68, 0.5 %), soil moisture drying slowly with noise (channel 3, analog input
0x02, 0.01 signed) and a slowly falling battery voltage (channel 4, 0x74, 0.01 V).
Values depend only on (seed, node, reading index), never on wall time. A FaultSpec
injects a fault on chosen nodes between two simulated times: ``shift`` (level shift of
``size`` noise sigmas), ``stuck`` (holds the value at the fault start), ``spike``
(isolated spikes of ``size`` sigmas, one reading in five).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

CHANNELS = ("temperature", "humidity", "soil_moisture", "battery")
SIGMA = {"temperature": 0.3, "humidity": 1.0, "soil_moisture": 0.4, "battery": 0.005}
FAULT_KINDS = ("shift", "stuck", "spike")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault on ``nodes`` (1-based) from ``start_s`` to ``end_s`` simulated seconds
    after the simulation start, on ``channels``, of ``size`` noise sigmas."""

    kind: str
    nodes: frozenset[int]
    start_s: float
    end_s: float
    size: float = 5.0
    channels: tuple[str, ...] = ("temperature",)

    def active(self, node: int, t_s: float) -> bool:
        return node in self.nodes and self.start_s <= t_s < self.end_s


def parse_fault(text: str) -> FaultSpec:
    """Parse ``kind:node=2,start=600,end=1200,size=5[,channels=temperature+humidity]``.

    ``node`` may list several nodes separated by ``+``. Raises ValueError with the reason.
    """
    kind, _, rest = text.partition(":")
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
    fields: dict[str, str] = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"fault option {part!r} is not key=value")
        fields[key.strip()] = value.strip()
    unknown = set(fields) - {"node", "start", "end", "size", "channels"}
    if unknown:
        raise ValueError(f"unknown fault option(s): {', '.join(sorted(unknown))}")
    try:
        nodes = frozenset(int(n) for n in fields.get("node", "1").split("+"))
        start = float(fields.get("start", "0"))
        end = float(fields.get("end", "inf"))
        size = float(fields.get("size", "5"))
    except ValueError as exc:
        raise ValueError(f"bad number in fault {text!r}: {exc}") from None
    channels = tuple(fields.get("channels", "temperature").split("+"))
    bad = [c for c in channels if c not in CHANNELS]
    if bad:
        raise ValueError(f"unknown channel(s) {bad}; known: {', '.join(CHANNELS)}")
    if end <= start:
        raise ValueError(f"fault end {end} is not after its start {start}")
    return FaultSpec(kind, nodes, start, end, size, channels)


@dataclass(slots=True)
class SensorNode:
    """One virtual node (``index`` is 1-based)."""

    index: int
    seed: int = 0
    interval_s: float = 60.0
    faults: list[FaultSpec] = field(default_factory=list)
    _stuck: dict[tuple[int, str], float] = field(default_factory=dict)

    @property
    def address(self) -> int:
        """The node's radio address on serial protocols."""
        return self.index

    @property
    def dev_eui(self) -> str:
        """The node's DevEUI (16 lower-case hex digits) for LoRaWAN/MQTT."""
        return f"a84041000000{self.index:04x}"

    def normal(self, k: int, t0: float) -> dict[str, float]:
        """Fault-free values of reading ``k`` (simulated time ``t0 + k * interval_s``)."""
        rng = random.Random(f"{self.seed}:{self.index}:{k}")
        t = t0 + k * self.interval_s
        day = 2 * math.pi * ((t % 86400) / 86400 - 0.375)  # warmest mid-afternoon
        phase = self.index * 0.7
        temp = 16 + phase + 6 * math.sin(day) + rng.gauss(0, SIGMA["temperature"])
        hum = 70 - 2.5 * (temp - 16 - phase) + rng.gauss(0, SIGMA["humidity"])
        elapsed_days = k * self.interval_s / 86400
        soil = 35 - 1.5 * elapsed_days + self.index + rng.gauss(0, SIGMA["soil_moisture"])
        battery = 3.6 - 0.002 * elapsed_days - 0.01 * self.index + rng.gauss(0, SIGMA["battery"])
        return {"temperature": temp, "humidity": min(100.0, max(0.0, hum)),
                "soil_moisture": soil, "battery": battery}

    def reading(self, k: int, t0: float) -> dict[str, float]:
        """Values of reading ``k`` with any active fault applied."""
        values = self.normal(k, t0)
        t_rel = k * self.interval_s
        for fi, fault in enumerate(self.faults):
            if not fault.active(self.index, t_rel):
                continue
            for ch in fault.channels:
                if fault.kind == "shift":
                    values[ch] += fault.size * SIGMA[ch]
                elif fault.kind == "stuck":
                    values[ch] = self._stuck.setdefault((fi, ch), self.normal(
                        math.ceil(fault.start_s / self.interval_s), t0)[ch])
                elif fault.kind == "spike" and random.Random(f"spike:{self.seed}:{self.index}:{k}").random() < 0.2:
                    values[ch] += fault.size * SIGMA[ch]
        return values

    def payload(self, values: dict[str, float]) -> bytes:
        """Cayenne LPP bytes of ``values``."""
        return lpp_encode(values)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def lpp_encode(values: dict[str, float]) -> bytes:
    """Channels 1..4 as Cayenne LPP (see the module docstring)."""
    temp = _clamp(round(values["temperature"] * 10), -32768, 32767)
    hum = _clamp(round(values["humidity"] * 2), 0, 255)
    soil = _clamp(round(values["soil_moisture"] * 100), -32768, 32767)
    volt = _clamp(round(values["battery"] * 100), 0, 65535)
    return (bytes([1, 0x67]) + temp.to_bytes(2, "big", signed=True)
            + bytes([2, 0x68, hum])
            + bytes([3, 0x02]) + soil.to_bytes(2, "big", signed=True)
            + bytes([4, 0x74]) + volt.to_bytes(2, "big"))


def lpp_values(values: dict[str, float]) -> dict[str, float]:
    """The values as an LPP decoder will see them (quantised like lpp_encode)."""
    return {"temperature": round(values["temperature"] * 10) / 10,
            "humidity": round(values["humidity"] * 2) / 2,
            "soil_moisture": round(values["soil_moisture"] * 100) / 100,
            "battery": round(values["battery"] * 100) / 100}


@dataclass(frozen=True, slots=True)
class NodeReading:
    """Reading ``k`` of ``node`` at simulated time ``time_s``."""

    node: SensorNode
    k: int
    time_s: float
    values: dict[str, float]
    payload: bytes


def schedule(nodes: list[SensorNode], t0: float, interval_s: float, start: int = 0):
    """Yield NodeReading in time order forever: node i reports at ``t0 + (k + i/N) * interval``."""
    n = len(nodes)
    k = start
    while True:
        for i, node in enumerate(nodes):
            values = node.reading(k, t0)
            yield NodeReading(node, k, t0 + (k + i / n) * interval_s, values, node.payload(values))
        k += 1

"""Module drivers: one per protocol; ``make_driver(protocol)`` builds a fresh one."""

from __future__ import annotations

from firmware_bridge.drivers.bridge import BridgeDriver
from firmware_bridge.drivers.rak3172 import Rak3172Driver
from firmware_bridge.drivers.reyax import ReyaxDriver
from firmware_bridge.drivers.seeed_e5 import SeeedE5Driver

AtDriver = ReyaxDriver | Rak3172Driver | SeeedE5Driver
Driver = BridgeDriver | AtDriver
PROTOCOLS: dict[str, type] = {
    "bridge": BridgeDriver,
    "reyax": ReyaxDriver,
    "rak3172": Rak3172Driver,
    "seeed_e5": SeeedE5Driver,
}


def make_driver(protocol: str) -> Driver:
    """A new driver for ``protocol``; ValueError names the known ones otherwise."""
    try:
        cls = PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}") from None
    driver: Driver = cls()
    return driver

"""Builds realistic ChirpStack v4 uplinks (Cayenne LPP payloads) for tests, and publishes them.

Each device reports temperature and humidity every ``interval_s`` (simulated time) with a
diurnal cycle and noise; ``fault`` adds a sustained temperature level shift to one device
between two reading indices.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from dataclasses import dataclass

import numpy as np
from paho.mqtt import client as mqtt


def lpp(temperature: float, humidity: float, battery_v: float = 3.6) -> bytes:
    return (struct.pack(">BBh", 1, 0x67, round(temperature * 10))
            + struct.pack(">BBB", 2, 0x68, round(humidity * 2))
            + struct.pack(">BBH", 3, 0x74, round(battery_v * 100)))


def dev_eui(i: int) -> str:
    return f"a84041000000{i:04x}"


def chirpstack_v4(eui: str, ts: float, fcnt: int, payload: bytes, rssi: float = -80.0, snr: float = 7.5) -> dict:
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1e9):09d}+00:00"
    return {
        "deduplicationId": f"{eui}-{fcnt}",
        "time": iso,
        "deviceInfo": {"tenantId": "t", "applicationId": "app-1", "applicationName": "field",
                       "deviceProfileName": "lpp", "deviceName": f"node-{eui[-4:]}", "devEui": eui},
        "devAddr": "00189440", "dr": 5, "fPort": 2, "fCnt": fcnt,
        "data": base64.b64encode(payload).decode(),
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": rssi, "snr": snr}],
        "txInfo": {"frequency": 868100000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7}}},
    }


@dataclass
class Fault:
    device: int
    start: int
    end: int
    shift: float


def field_uplinks(devices: int, readings: int, interval_s: float = 600.0, fault: Fault | None = None,
                  seed: int = 7, first: int = 0) -> list[tuple[str, dict]]:
    """Uplinks in time order as (topic, ChirpStack v4 body), reading indices [first, readings)."""
    start = time.time() - readings * interval_s  # the last reading lands about now
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * math.pi, devices)
    noise = rng.normal(0, 1, (readings, devices, 2))
    out = []
    for k in range(first, readings):
        ts = start + k * interval_s
        for d in range(devices):
            day = 2 * math.pi * (ts % 86400) / 86400 + phase[d]
            temp = 18 + 4 * math.sin(day) + 0.25 * noise[k, d, 0]
            hum = 65 - 8 * math.sin(day) + 1.0 * noise[k, d, 1]
            if fault and d == fault.device and fault.start <= k < fault.end:
                temp += fault.shift
            eui = dev_eui(d)
            out.append((f"application/app-1/device/{eui}/event/up", chirpstack_v4(eui, ts, k, lpp(temp, hum))))
    return out


def publish_all(host: str, port: int, messages: list[tuple[str, bytes | dict]], qos: int = 1) -> None:
    """Publish messages with QoS 1 and wait until the broker acknowledged every one."""
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.max_inflight_messages_set(1000)
    client.connect(host, port)
    client.loop_start()
    try:
        infos = []
        for topic, body in messages:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            infos.append(client.publish(topic, payload, qos=qos))
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()

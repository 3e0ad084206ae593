"""The same virtual nodes published as ChirpStack v4 uplink events to an MQTT broker.

Topic ``application/<application_id>/device/<devEui>/event/up``; body as ChirpStack v4
writes it (deviceInfo.devEui, fCnt, fPort 1, base64 ``data``, rxInfo rssi/snr, txInfo
frequency and LoRa modulation), with ``time`` the simulated time. Messages go out at
QoS 1 in time order, paced by ``time_scale``; ``run`` returns the number published.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from paho.mqtt import client as mqtt

from firmware_bridge.sensor_nodes import FaultSpec, NodeReading, SensorNode, schedule

GATEWAY_ID = "0016c001f1500001"


def chirpstack_v4_uplink(r: NodeReading, application_id: str, uplink_id: int) -> dict[str, Any]:
    """The ChirpStack v4 ``event/up`` JSON document for one reading."""
    node = r.node
    link = random.Random(f"link:{node.seed}:{node.index}:{r.k}")
    return {
        "deduplicationId": str(uuid.UUID(int=random.Random(f"{node.index}:{r.k}").getrandbits(128))),
        "time": datetime.fromtimestamp(r.time_s, UTC).isoformat(),
        "deviceInfo": {
            "tenantName": "lora-gateway simulator",
            "applicationId": application_id,
            "applicationName": "simulated field sensors",
            "deviceProfileName": "cayenne-lpp",
            "deviceName": f"sim-node-{node.index}",
            "devEui": node.dev_eui,
        },
        "devAddr": f"{0x26000000 + node.index:08x}",
        "dr": 3,
        "fPort": 1,
        "fCnt": r.k,
        "data": base64.b64encode(r.payload).decode(),
        "rxInfo": [{
            "gatewayId": GATEWAY_ID,
            "uplinkId": uplink_id,
            "rssi": round(-60.0 - 7 * node.index + link.gauss(0, 2)),
            "snr": round(9.0 - node.index + link.gauss(0, 1), 1),
        }],
        "txInfo": {"frequency": 868_100_000,
                   "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 9, "codeRate": "CR_4_5"}}},
    }


class MqttSimulator:
    """Publishes ``nodes`` virtual nodes to ``host:port``; see the module docstring."""

    def __init__(self, host: str, port: int, nodes: int = 3, *, interval_s: float = 60.0,
                 time_scale: float = 600.0, seed: int = 0, faults: Iterable[FaultSpec] = (),
                 application_id: str = "00000000-0000-0000-0000-000000000001",
                 start_time: float | None = None) -> None:
        self.host, self.port = host, port
        self.interval_s = interval_s
        self.time_scale = time_scale
        self.application_id = application_id
        self.start_time = time.time() if start_time is None else start_time
        self.nodes = [SensorNode(i, seed, interval_s, list(faults)) for i in range(1, nodes + 1)]
        self.published = 0

    def topic(self, node: SensorNode) -> str:
        return f"application/{self.application_id}/device/{node.dev_eui}/event/up"

    def run(self, duration_s: float | None = None, max_messages: int | None = None,
            stop: threading.Event | None = None) -> int:
        """Publish until ``duration_s`` real seconds, ``max_messages`` or ``stop``; blocks.
        Raises ConnectionError when the broker cannot be reached."""
        stop = stop or threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lora-sim-{uuid.uuid4().hex[:8]}")
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ConnectionError(f"cannot reach MQTT broker {self.host}:{self.port}: {exc}") from exc
        client.loop_start()
        infos = []
        try:
            t_real0 = time.monotonic()
            for r in schedule(self.nodes, self.start_time, self.interval_s):
                if max_messages is not None and self.published >= max_messages:
                    break
                due = t_real0 + (r.time_s - self.start_time) / self.time_scale
                if duration_s is not None and due - t_real0 > duration_s:
                    break
                if stop.wait(max(0.0, due - time.monotonic())):
                    break
                body = json.dumps(chirpstack_v4_uplink(r, self.application_id, self.published))
                infos.append(client.publish(self.topic(r.node), body, qos=1))
                self.published += 1
                infos = [i for i in infos if not i.is_published()]
            for info in infos:
                info.wait_for_publish(5)
        finally:
            client.loop_stop()
            client.disconnect()
        return self.published

"""A test-side MQTT subscriber that records what a real broker delivers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paho.mqtt import client as mqtt


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    @property
    def text(self) -> str:
        return self.payload.decode()


class Probe:
    """Subscribes to ``topic`` (re-subscribing on every connect) and records messages."""

    def __init__(self, host: str, port: int, topic: str, client_id: str = "", clean: bool = True,
                 protocol: int = mqtt.MQTTv5) -> None:
        kwargs: dict[str, Any] = {"clean_session": clean} if protocol != mqtt.MQTTv5 else {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, **kwargs)
        self.topic = topic
        self.messages: list[Message] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.close()
            raise AssertionError("probe could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(Message(msg.topic, msg.payload, bool(msg.retain),
                                         getattr(msg, "properties", None)))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:80]) for m in self.messages]
                    raise AssertionError(f"no matching message within {timeout} s; seen {seen}")
                self.cond.wait(left)

    def on(self, topic: str) -> list[Message]:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

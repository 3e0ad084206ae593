"""A private RabbitMQ node and a confirm-mode publisher, for tests and benchmarks.

The node is Debian's ``rabbitmq-server`` started as the current user on loopback, with its
own node name, ports, data and log directories, and its own epmd port, so it neither needs
nor touches a system RabbitMQ service.

``RabbitNode(workdir).start()`` returns once the broker accepts AMQP connections (about
5-10 s on a loaded 2-core box); ``stop()`` stops the node (``rabbitmqctl stop``, then
SIGKILL after a timeout) and the epmd daemon it started.

``publish_confirmed`` is ChirpStack's AMQP integration as the broker sees it
(``amq.topic``, ``application.<app>.device.<devEUI>.event.up``): persistent messages with
publisher confirms, at most ``window`` unconfirmed; it returns the indices the broker
confirmed (for quorum queues: a majority of replicas wrote the message).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pika

from tests.conftest import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_installed() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists() and shutil.which("erl") is not None


class RabbitNode:
    """One RabbitMQ node on 127.0.0.1 (see the module docstring)."""

    def __init__(self, workdir: Path, name: str | None = None) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"{name or 'lgw' + str(self.port)}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "home").mkdir(exist_ok=True)
        (workdir / "enabled_plugins").write_text("[rabbitmq_consistent_hash_exchange].\n")
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )

    @property
    def env(self) -> dict[str, str]:
        w = self.workdir
        return {**os.environ, "HOME": str(w / "home"), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_MNESIA_BASE": str(w / "mnesia"), "RABBITMQ_LOG_BASE": str(w / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(w / "plugins-expand"),
                "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq"), "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"), "RABBITMQ_PID_FILE": str(w / "pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}"}

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, timeout: float = 90) -> None:
        if not rabbitmq_installed():
            raise RuntimeError("rabbitmq-server is not installed: run scripts/test.sh (it installs it) "
                               "or apt-get install rabbitmq-server")
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env, start_new_session=True,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({self.proc.returncode}): "
                                   + (self.workdir / "stdout.log").read_text(errors="replace")[-2000:])
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            done = self.ctl("await_startup", "--timeout", str(max(1, int(deadline - time.monotonic()))))
            if done.returncode == 0:
                return
            raise RuntimeError(f"rabbitmq did not finish starting: {done.stderr or done.stdout}")
        raise RuntimeError(f"rabbitmq did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.ctl("stop", timeout=30)
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        # the node started an epmd of its own on epmd_port; nothing else uses that port
        subprocess.run([shutil.which("epmd") or "/usr/lib/erlang/bin/epmd", "-port", str(self.epmd_port), "-kill"],
                       env=self.env, capture_output=True, timeout=10)



def routing_key(topic: str) -> str:
    """An MQTT-style topic (``application/<id>/device/<eui>/event/up``) as an AMQP routing key."""
    return topic.replace("/", ".")


def publish_confirmed(host: str, port: int, messages: Sequence[tuple[str, Any]], *, window: int = 500,
                      exchange: str = "amq.topic", stop_after: int | None = None) -> list[int]:
    """Publish ``(topic, body)`` pairs (body: dict -> JSON, or bytes); returns the confirmed indices."""
    bodies = [(routing_key(t), b if isinstance(b, bytes) else json.dumps(b).encode()) for t, b in messages]
    total = len(bodies) if stop_after is None else min(stop_after, len(bodies))
    confirmed: list[int] = []
    state = {"next": 0, "tag": 0, "outstanding": {}}  # delivery tag -> message index
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def pump(channel: Any) -> None:
        out = state["outstanding"]
        while state["next"] < total and len(out) < window:
            i = state["next"]
            state["next"] += 1
            state["tag"] += 1
            out[state["tag"]] = i
            key, body = bodies[i]
            channel.basic_publish(exchange, key, body, props)
        if state["next"] >= total and not out:
            channel.connection.close()

    def on_confirm(frame: Any, channel: Any) -> None:
        method = frame.method
        out = state["outstanding"]
        tags = [t for t in out if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        ok = method.NAME == "Basic.Ack"
        for t in sorted(tags):
            i = out.pop(t)
            if ok:
                confirmed.append(i)
        pump(channel)

    def on_channel(channel: Any) -> None:
        channel.confirm_delivery(lambda frame: on_confirm(frame, channel))
        pump(channel)

    conn = pika.SelectConnection(pika.ConnectionParameters(host=host, port=port),
                                 on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
                                 on_open_error_callback=lambda c, e: c.ioloop.stop(),
                                 on_close_callback=lambda c, r: c.ioloop.stop())
    try:
        conn.ioloop.start()
    finally:
        conn.ioloop.close()  # its wake-up socket pair
    confirmed.sort()
    return confirmed

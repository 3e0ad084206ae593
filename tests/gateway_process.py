"""``lora-gateway run`` as a real child process, for the fault and service tests.

``write_config`` writes a TOML config (MQTT source, file handler, optional MQTT handler,
the metrics endpoint on a free loopback port); ``GatewayProcess`` starts the command, reads
``/metrics`` and ``/health`` over HTTP, and always kills the child in ``close()``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import REPO, free_port

LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Tables and arrays of tables one level deep (enough for the gateway's config)."""
    out: list[str] = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{section}]]")
                out += [f"{k} = {toml_value(v)}" for k, v in item.items()]
                out.append("")
        else:
            out.append(f"[{section}]")
            out += [f"{k} = {toml_value(v)}" for k, v in body.items()]
            out.append("")
    return "\n".join(out)


def write_config(tmp_path: Path, broker: Any, *, alert_broker: Any = None, metrics_port: int | None = None,
                 extra: dict[str, Any] | None = None) -> tuple[Path, int]:
    """A config for a gateway reading ChirpStack uplinks from ``broker``; returns (path, metrics port)."""
    port = metrics_port or free_port()
    handlers: list[dict[str, Any]] = [{"type": "file", "path": str(tmp_path / "alerts.jsonl")}]
    if alert_broker is not None:
        handlers.append({"type": "mqtt", "host": alert_broker.host, "port": alert_broker.port,
                         "topic_prefix": "site/alerts", "telemetry": False, "ack_timeout_s": 2.0,
                         "reconnect_min_s": 0.2, "reconnect_max_s": 1.0})
    data: dict[str, Any] = {
        "gateway": {"id": "gw-proc", "state_dir": str(tmp_path / "state"), "drain_timeout_s": 5.0},
        "sources": [{"type": "mqtt", "name": "chirpstack", "host": broker.host, "port": broker.port,
                     "client_id": "gw-proc-src", "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}],
        "handlers": handlers,
        "profiles": [{"name": "lpp-nodes", "match_name": "node-*", "codec": "cayenne_lpp",
                      "battery_field": "voltage_3"}],
        "model": {"calibration_steps": 160, "calibration_windows": 160},
        "batcher": {"max_batch": 64, "max_delay_ms": 5.0},
        "alerts": {"raise_threshold": 1.5, "clear_threshold": 0.8},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / "gateway.toml"
    path.write_text(to_toml(data))
    return path, port


class GatewayProcess:
    """One ``lora-gateway run --config`` child; stdout and stderr go to ``log_path``."""

    def __init__(self, config: Path, metrics_port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.metrics_port = metrics_port
        self.log_path = log_path
        self._log = open(log_path, "ab")
        command = [str(Path(sys.executable).with_name("lora-gateway")), "run", "--config", str(config)]
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def health(self) -> tuple[int, dict[str, Any]] | None:
        """(status, body) of /health, or None while the endpoint is not up."""
        try:
            status, body = self._get("/health")
        except OSError:
            return None
        return status, json.loads(body)

    def metrics_text(self) -> str:
        return self._get("/metrics")[1].decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the ``lora_gateway_<name>`` samples whose labels include ``labels`` (0 if none)."""
        try:
            text = self.metrics_text()
        except OSError:
            return -1.0
        total = 0.0
        for line in text.splitlines():
            m = LINE.match(line)
            if not m or m["name"] != f"lora_gateway_{name}":
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m["value"])
        return total

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill the child if it still runs, reap it, close the log."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

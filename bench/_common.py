"""Shared helpers for the benchmarks: a private Mosquitto, a gateway built in-process,
ChirpStack v4 uplink bodies with the publish time in their ``time`` field, and the
machine's description for RESULTS.md. Nothing here is a test; pytest never collects bench/.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOPIC = "application/app-1/device/{eui}/event/up"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A private broker on a free loopback port: unlimited queues for persistent sessions
    (the saturation runs drain a backlog), no persistence to disk."""

    def __init__(self) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mosq-"))
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 10000000\nmax_inflight_messages 0\nmax_queued_bytes 0\n"
            f"log_dest file {self.dir}/mosquitto.log\nuser root\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Mosquitto":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def dev_eui(i: int) -> str:
    return f"a84041{i:010x}"


def lpp(temperature: float, humidity: float, battery_v: float = 3.6) -> bytes:
    return (struct.pack(">BBh", 1, 0x67, round(temperature * 10))
            + struct.pack(">BBB", 2, 0x68, round(humidity * 2))
            + struct.pack(">BBH", 3, 0x74, round(battery_v * 100)))


def payload_variants(n: int = 256, seed: int = 7) -> list[str]:
    """Base64 Cayenne LPP payloads of normal readings (temperature, humidity, battery)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append(base64.b64encode(lpp(20 + 0.25 * rng.normal(), 60 + rng.normal())).decode())
    return out


def payload_index(device: int, fcnt: int) -> int:
    """Which payload variant a device sends at a frame counter (the same sequence in the
    warm-up and in the load generator, so live readings continue the calibrated stream)."""
    return (fcnt * 7 + device * 13) % 256


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1e6):06d}Z"


def body_template(eui: str) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of a ChirpStack v4 uplink: prefix + ISO time + middle +
    fCnt + dedup_field(eui, fCnt) + ',"data":"' + payload + suffix. Built once per device so
    the load generator only formats the time, the frame counter and the payload."""
    head = '{"time":"'
    mid = ('","deviceInfo":{"tenantId":"t","applicationId":"app-1","applicationName":"field",'
           '"deviceProfileName":"lpp","deviceName":"node-' + eui[-4:] + '","devEui":"' + eui + '"},'
           '"devAddr":"00189440","dr":5,"fPort":2,"fCnt":')
    tail = ('","rxInfo":[{"gatewayId":"0016c001f153a14c","rssi":-80,"snr":7.5}],'
            '"txInfo":{"frequency":868100000,"modulation":{"lora":{"bandwidth":125000,"spreadingFactor":7}}}}')
    return head, mid, tail


def dedup_field(eui: str, fcnt: int) -> str:
    """``,"deduplicationId":"..."``: one id per uplink, as ChirpStack gives (the gateway drops a
    second uplink with the same id as a redelivery)."""
    return f',"deduplicationId":"{eui}-{fcnt}"'


def uplink_body(eui: str, ts: float, fcnt: int, payload_b64: str) -> bytes:
    head, mid, tail = body_template(eui)
    return f'{head}{iso(ts)}{mid}{fcnt}{dedup_field(eui, fcnt)},"data":"{payload_b64}{tail}'.encode()


CALIBRATION_STEPS, CALIBRATION_WINDOWS = 160, 128
"""Per-device calibration for the benches (the bundled default is 1008 readings). The
profile is fitted on the 129 windows cut from the 160 calibration readings; fewer than
about 100 windows leave it under-fitted (most windows score above 1.0). With this, no
alert is raised on the benches' normal data. CALIBRATION_WINDOWS only matters for the
fallback (a device whose calibration readings could not be scored)."""
WARM_READINGS = CALIBRATION_STEPS + 2
"""Readings per device before every further reading is scored (T = 32 <= CALIBRATION_STEPS)."""


def gateway_config(host: str, port: int, state_dir: Path, *, max_batch: int = 64,
                   max_delay_ms: float = 5.0, max_devices: int = 10000, handlers: bool = True,
                   client_id: str = "bench-gw-src") -> dict[str, Any]:
    """A daemon config: mqtt source (ChirpStack v4), mqtt alert handler (and file), the
    bundled model with short calibration (WARM_READINGS readings per device)."""
    data: dict[str, Any] = {
        "gateway": {"id": "bench-gw", "state_dir": str(state_dir), "max_devices": max_devices},
        "sources": [{"type": "mqtt", "name": "chirpstack", "host": host, "port": port, "client_id": client_id,
                     "topics": [{"topic": "application/+/device/+/event/up", "shape": "chirpstack_v4"}]}],
        "handlers": [],
        "profiles": [{"name": "lpp-nodes", "match_name": "node-*", "codec": "cayenne_lpp", "battery_field": "voltage_3"}],
        "model": {"calibration_steps": CALIBRATION_STEPS, "calibration_windows": CALIBRATION_WINDOWS},
        "batcher": {"max_batch": max_batch, "max_delay_ms": max_delay_ms},
        "metrics": {"listen": None},
        # the benches pause the source between phases; a device is not "silent" for that
        "alerts": {"silent_min_s": 3600},
    }
    if handlers:
        data["handlers"] = [
            {"type": "mqtt", "host": host, "port": port, "topic_prefix": "site/alerts", "telemetry": False},
            {"type": "file", "path": str(state_dir / "alerts.jsonl")},
        ]
    return data


def make_gateway(data: dict[str, Any], **kwargs: Any) -> Any:
    from gateway.config import validate_config
    from gateway.plugin_manager import Registry, make_plugin_manager
    from gateway.service import Gateway

    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    return Gateway(validate_config(data, registry), pm, registry, **kwargs)


def machine() -> str:
    """One paragraph describing the machine and the versions."""
    import numpy
    import onnxruntime

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")), "?")
    except OSError:
        model = "?"
    return (f"{os.cpu_count()} CPU ({model}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}")


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float)

"""Start-up: process start to READY=1, for ``lora-gateway run`` as systemd starts it.

    .venv/bin/python bench/startup.py [--runs 5]

Each run starts a private Mosquitto (the MQTT source must connect before READY), binds an
AF_UNIX datagram socket, passes it as NOTIFY_SOCKET, starts ``lora-gateway run --config``
and times the READY=1 datagram from just before the fork. The config: mqtt source, file +
mqtt handlers, the bundled model (warm-up batch included), no metrics endpoint. Also
prints the time to import the CLI alone (``python -c "import gateway.cli"``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, Mosquitto, gateway_config, machine  # noqa: E402


def toml(data: dict) -> str:
    import json

    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in value.items() if v is not None]
    for key, value in data.items():
        if isinstance(value, list):
            for item in value:
                lines.append(f"[[{key}]]")
                for k, v in item.items():
                    if isinstance(v, list):  # topics: inline tables
                        inner = ", ".join("{" + ", ".join(f"{a} = {json.dumps(b)}" for a, b in t.items()) + "}" for t in v)
                        lines.append(f"{k} = [{inner}]")
                    else:
                        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def one_run(broker: Mosquitto, tmp: Path) -> tuple[float, float]:
    cfg = gateway_config(broker.host, broker.port, tmp / "state")
    cfg["metrics"] = {}
    path = tmp / "gateway.toml"
    path.write_text(toml(cfg))
    sock_path = str(tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    exe = str(Path(sys.executable).with_name("lora-gateway"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([exe, "run", "--config", str(path)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "NOTIFY_SOCKET": sock_path})
    try:
        while True:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg:
                ready = time.perf_counter() - t0
                break
        t1 = time.perf_counter()
        proc.terminate()
        proc.wait(20)
        stop = time.perf_counter() - t1
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"no READY=1 within 30 s: {proc.stderr.read().decode() if proc.stderr else ''}")
    finally:
        sock.close()
        os.unlink(sock_path)
    return ready, stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(machine())
    imports = []
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gateway.cli"], check=True, cwd=REPO)
        imports.append(time.perf_counter() - t)
    ready, stops = [], []
    with Mosquitto() as broker:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
                r, s = one_run(broker, Path(tmp))
                ready.append(r)
                stops.append(s)
                print(f"run {i + 1}: READY=1 after {r:.2f} s, stopped (SIGTERM to exit) in {s:.2f} s")
    print(f"start to READY=1: median {statistics.median(ready):.2f} s, max {max(ready):.2f} s "
          f"(python + import gateway.cli alone: median {statistics.median(imports):.2f} s)")


if __name__ == "__main__":
    main()

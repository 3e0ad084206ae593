"""Home Assistant for real: the ``homeassistant`` handler's discovery read by a real Home
Assistant, not by a test of our own JSON.

Home Assistant runs headless as its own process from its own virtual environment (it pins
its own paho-mqtt, aiohttp and a hundred more; it never goes into ours):

    python3 -m venv /tmp/ha-venv
    /tmp/ha-venv/bin/pip install homeassistant==2024.3.3 paho-mqtt==1.6.1 janus==1.0.0
    .venv/bin/python bench/homeassistant_discovery.py --hass /tmp/ha-venv/bin/hass

What it does: a private Mosquitto; Home Assistant with its MQTT integration (a config
entry written into ``.storage``, discovery on) and ``mqtt_statestream``, which publishes
every entity's state and attributes back on ``hastate/<domain>/<object_id>/...``; the
gateway in-process with an MQTT source and the ``homeassistant`` handler; ChirpStack v4
uplinks from three devices, one with a low battery (a ``battery_low`` alert, so its
problem sensor turns on). It then checks that every entity the gateway announced (the
retained configs under ``homeassistant/``) appears in Home Assistant with the state it
should have, and, after the gateway stops (its last will: ``offline``), that every one of
them is ``unavailable``. Prints one row per entity and the Home Assistant version; exit
status 1 on any mismatch. Home Assistant 2024.3.3 is the newest that runs on Python 3.11.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from _common import Mosquitto, dev_eui, free_port, gateway_config, lpp, make_gateway, uplink_body

HA_CONFIG = """http:
  server_host: 127.0.0.1
  server_port: {http_port}
homeassistant:
  name: bench
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
mqtt_statestream:
  base_topic: hastate
  publish_attributes: true
logger:
  default: warning
"""


def write_ha_config(config_dir: Path, host: str, port: int) -> None:
    """configuration.yaml plus the MQTT integration's config entry (the UI's job normally)."""
    (config_dir / ".storage").mkdir(parents=True)
    (config_dir / "configuration.yaml").write_text(HA_CONFIG.format(http_port=free_port()))
    entry = {"entry_id": "0123456789abcdef0123456789abcdef", "version": 1, "minor_version": 1, "domain": "mqtt",
             "title": f"{host}:{port}", "data": {"broker": host, "port": port, "discovery": True,
                                                  "discovery_prefix": "homeassistant"},
             "options": {}, "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
             "unique_id": None, "disabled_by": None}
    (config_dir / ".storage" / "core.config_entries").write_text(json.dumps(
        {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}))


class Watcher:
    """Collects retained discovery configs and Home Assistant's statestream."""

    def __init__(self, host: str, port: int) -> None:
        self.lock = threading.Lock()
        self.configs: dict[str, dict[str, Any]] = {}
        self.ha_online = False  # Home Assistant's birth message on homeassistant/status
        self.ha: dict[tuple[str, str], dict[str, Any]] = {}  # (domain, object_id) -> {state, attrs...}
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="bench-watch")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe([("homeassistant/#", 1), ("hastate/#", 1)])
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        with self.lock:
            if msg.topic == "homeassistant/status":
                self.ha_online = msg.payload == b"online"
            elif parts[0] == "homeassistant" and parts[-1] == "config" and msg.payload:
                self.configs[msg.topic] = json.loads(msg.payload)
            elif parts[0] == "hastate" and len(parts) == 4:
                value = msg.payload.decode()
                try:
                    value = json.loads(value) if parts[3] != "state" else value
                except ValueError:
                    pass
                self.ha.setdefault((parts[1], parts[2]), {})[parts[3]] = value

    def ha_by_name(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {str(v.get("friendly_name")): {"entity": f"{d}.{o}", **v} for (d, o), v in self.ha.items()}

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def expected(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """friendly name Home Assistant gives each announced entity -> (domain, config)."""
    out = {}
    for topic, cfg in configs.items():
        domain = topic.split("/")[1]
        device = (cfg.get("device") or {}).get("name")
        name = cfg.get("name")
        friendly = f"{device} {name}" if device and name else (name or device)
        out[str(friendly)] = {"domain": domain, "config": cfg}
    return out


def publish_uplinks(host: str, port: int, first_fcnt: int) -> dict[str, dict[str, float]]:
    """Three devices, three readings each; the third device's battery is low (2.5 V)."""
    pub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.connect(host, port)
    pub.loop_start()
    sent: dict[str, dict[str, float]] = {}
    now = time.time()
    for k in range(first_fcnt, first_fcnt + 3):
        for i, battery in ((1, 3.6), (2, 3.5), (3, 2.5)):
            eui = dev_eui(i)
            temp, hum = 20.0 + i + k, 50.0 + i
            payload = base64.b64encode(lpp(temp, hum, battery)).decode()
            pub.publish(f"application/app-1/device/{eui}/event/up", uplink_body(eui, now + k, k, payload), qos=1).wait_for_publish()
            sent[eui] = {"temperature_1": temp, "humidity_2": hum}
    pub.loop_stop()
    pub.disconnect()
    return sent


def wait_for(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return bool(cond())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hass", required=True, help="the hass executable of Home Assistant's own venv")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for Home Assistant")
    ap.add_argument("--second-burst", action="store_true",
                    help="send a second round of uplinks 5 s after the first (tells a missed first state "
                         "from a template that never renders)")
    ap.add_argument("--keep-log", type=Path, help="copy Home Assistant's log here")
    args = ap.parse_args()
    version = subprocess.run([args.hass, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"Home Assistant {version}")
    problems: list[str] = []
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp:
        config_dir = Path(tmp) / "ha"
        write_ha_config(config_dir, broker.host, broker.port)
        log = open(Path(tmp) / "hass.log", "w")
        hass = subprocess.Popen([args.hass, "-c", str(config_dir), "--skip-pip", "--log-file", str(Path(tmp) / "ha.log")],
                                stdout=log, stderr=subprocess.STDOUT)
        watcher = Watcher(broker.host, broker.port)
        gateway = None
        try:
            started = time.monotonic()
            # HA's MQTT integration publishes its birth message once Home Assistant has started
            if not wait_for(lambda: watcher.ha_online or hass.poll() is not None, args.timeout) or not watcher.ha_online:
                print("Home Assistant did not come up; its log:\n" + (Path(tmp) / "hass.log").read_text()[-3000:])
                return 1
            print(f"Home Assistant up in {time.monotonic() - started:.0f} s")
            data = gateway_config(broker.host, broker.port, Path(tmp) / "state", handlers=False)
            data["handlers"] = [{"type": "homeassistant", "host": broker.host, "port": broker.port,
                                 "topic_prefix": "lora-gateway/bench", "node_id": "bench"}]
            data["profiles"][0]["battery_low"] = 3.0  # volts: the third device's 2.5 V raises battery_low
            gateway = make_gateway(data)
            gateway.start()
            publish_uplinks(broker.host, broker.port, 0)
            if args.second_burst:
                time.sleep(5)  # Home Assistant has read the discovery configs and subscribed
                publish_uplinks(broker.host, broker.port, 3)
            want: dict[str, dict[str, Any]] = {}

            def all_seen() -> bool:
                nonlocal want
                with watcher.lock:
                    want = expected(dict(watcher.configs))
                have = watcher.ha_by_name()
                return bool(want) and all(n in have and have[n].get("state") not in (None, "unknown", "unavailable")
                                          for n in want)

            wait_for(all_seen, 120)
            have = watcher.ha_by_name()
            print(f"{len(want)} entities announced; Home Assistant shows:")
            for name in sorted(want):
                got = have.get(name)
                state = got.get("state") if got else None
                print(f"  {want[name]['domain']:<14} {name:<40} -> {got['entity'] if got else 'MISSING':<48} {state}")
                if got is None:
                    problems.append(f"{name}: not in Home Assistant")
                elif state in (None, "unknown", "unavailable"):
                    problems.append(f"{name}: state {state}")
                device = (want[name]["config"].get("device") or {}).get("name", "")
                slug = "".join(c if c.isalnum() else "_" for c in device.lower())
                if got is not None and not got["entity"].split(".", 1)[1].startswith(slug):
                    problems.append(f"{name}: entity id {got['entity']} is not named after its device {device!r}")
            alert_states = {n: have[n].get("state") for n in want if n.endswith(" Alert") and n in have}
            if sorted(alert_states.values()) != ["off", "off", "on"]:
                problems.append(f"alert sensors should be off, off, on (battery_low on the third): {alert_states}")
            gateway.stop()
            gateway = None
            wait_for(lambda: all(watcher.ha_by_name().get(n, {}).get("state") == "unavailable" for n in want
                                 if not n.endswith("status") and "Gateway" not in n), 60)
            have = watcher.ha_by_name()
            after = {n: have.get(n, {}).get("state") for n in want}
            print("after the gateway stopped (last will 'offline'):")
            for name in sorted(after):
                print(f"  {name:<40} {after[name]}")
            for name, state in after.items():
                gateway_entity = want[name]["config"].get("state_topic", "").endswith("/status")
                if gateway_entity and state != "off" or not gateway_entity and state != "unavailable":
                    problems.append(f"{name}: {state} after the gateway stopped")
        finally:
            if gateway is not None:
                gateway.stop()
            watcher.stop()
            hass.terminate()
            try:
                hass.wait(60)
            except subprocess.TimeoutExpired:
                hass.kill()
            log.close()
            if args.keep_log:
                args.keep_log.write_text((Path(tmp) / "hass.log").read_text())
    print("OK: every announced entity appeared with its state and availability" if not problems
          else "PROBLEMS:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

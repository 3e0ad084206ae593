"""The issue-12 SIGKILL check at full size: two Mosquitto brokers, a default-config
``lora-gateway run`` child reading ChirpStack v4 uplinks (QoS 1, persistent session) and
publishing durable telemetry (QoS 1) to a persistent subscriber on the second broker;
8,000 uplinks from 50 devices; SIGKILL at readings_total >= 2,800; restart.

    .venv/bin/python bench/sigkill_durable.py [--devices 50] [--readings 160] [--kill-at 2800]

Prints uplinks lost (published, never seen as telemetry), duplicate telemetry messages,
redeliveries dropped, log records replayed, and the restart's time to /health 200.
``tests/test_fault_durable.py`` is the same check at 2,000 uplinks.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import machine  # noqa: E402

from tests.conftest import Broker  # noqa: E402
from tests.gateway_process import GatewayProcess  # noqa: E402
from tests.test_e2e_mqtt import wait_for  # noqa: E402
from tests.test_fault_durable import TelemetrySubscriber, durable_config  # noqa: E402
from tests.uplink_factory import field_uplinks, publish_all  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--readings", type=int, default=160, help="per device (50 x 160 = 8,000)")
    ap.add_argument("--kill-at", type=int, default=2800)
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-sigkill-") as tmp_name:
        tmp = Path(tmp_name)
        broker, dashboard = Broker(tmp / "broker"), Broker(tmp / "dashboard")
        broker.start()
        dashboard.start()
        sub = TelemetrySubscriber(dashboard)
        config, port = durable_config(tmp, broker, dashboard)  # [state] defaults: checkpoint every 60 s
        uplinks = field_uplinks(devices=args.devices, readings=args.readings, seed=12)
        expected = {(body["deviceInfo"]["devEui"], body["fCnt"]) for _, body in uplinks}
        gw = GatewayProcess(config, port, tmp / "gateway-1.log")
        gw2: GatewayProcess | None = None
        try:
            assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 60), gw.log()
            publisher = threading.Thread(target=publish_all, args=(broker.host, broker.port, uplinks), daemon=True)
            publisher.start()
            assert wait_for(lambda: gw.metric("readings_total") >= args.kill_at, 120), gw.log()[-3000:]
            at_kill = gw.metric("readings_total")
            gw.signal(signal.SIGKILL)
            gw.wait(10)
            publisher.join(120)
            t0 = time.monotonic()
            gw2 = GatewayProcess(config, port, tmp / "gateway-2.log")
            wait_for(lambda: (h := gw2.health()) is not None and h[0] == 200, 120)
            ready = time.monotonic() - t0
            wait_for(lambda: sub.unique() >= expected, 300)
            done = time.monotonic() - t0
            lost = len(expected - sub.unique())
            print(f"{len(uplinks)} uplinks from {args.devices} devices; SIGKILL at readings_total {at_kill:.0f}")
            print(f"lost {lost} of {len(expected)}; duplicate telemetry messages {sub.duplicates()}; "
                  f"redeliveries dropped {gw2.metric('uplinks_duplicate_total'):.0f}; "
                  f"log records replayed {gw2.metric('ingest_log_replayed_total'):.0f}")
            print(f"restart: /health 200 after {ready:.2f} s; all telemetry out {done:.1f} s after the restart")
            gw2.signal(signal.SIGTERM)
            print(f"clean stop after the restart: exit {gw2.wait(60)}")
        finally:
            gw.close()
            if gw2 is not None:
                gw2.close()
            sub.close()
            broker.stop()
            dashboard.stop()


if __name__ == "__main__":
    main()

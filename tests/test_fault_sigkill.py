"""Fault: ``lora-gateway run`` killed with SIGKILL under load, then started again.

A real child process reads ChirpStack uplinks from Mosquitto and raises alerts; its MQTT
alert handler points at a dashboard broker that is down, so the alerts it accepted sit in
the outbox. It is killed (SIGKILL: no clean-up runs) while uplinks are still queued.
More uplinks are published while it is dead. After the restart:

- every alert it had accepted (in the outbox on disk, or already in the JSON-lines file)
  reaches the dashboard, matched by idempotency key and marked as a replay;
- the uplinks published while it was dead arrive through the persistent session
  (``readings_total`` read over HTTP from ``/metrics``).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

from tests.conftest import Broker
from tests.gateway_process import GatewayProcess, write_config
from tests.test_e2e_mqtt import wait_for
from tests.test_fault_broker_outage import Subscriber, file_alerts
from tests.uplink_factory import Fault, dev_eui, field_uplinks, publish_all


def outbox_alert_keys(path: Path) -> set[str]:
    """Keys of the alerts stored in the outbox file (read-only, after the process died)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT payload FROM entries WHERE priority = 0").fetchall()
    conn.close()
    return {json.loads(p)["key"] for (p,) in rows}


def test_sigkill_under_load_loses_no_accepted_alert_and_the_session_keeps_the_uplinks(broker, tmp_path: Path) -> None:
    alert_broker = Broker(tmp_path / "alert-broker")  # configured, but down until after the kill
    config, port = write_config(tmp_path, broker, alert_broker=alert_broker)
    faulty = 1
    uplinks = field_uplinks(devices=4, readings=3000, fault=Fault(device=faulty, start=440, end=560, shift=14.0))
    # before: until an alert is raised; burst: published right before the kill, so the gateway is
    # still busy with it when killed (it drains a few thousand uplinks/s: without the burst it
    # could finish `before` first); after: published while it is dead
    before, burst, after = uplinks[: 800 * 4], uplinks[800 * 4: 2400 * 4], uplinks[2400 * 4:]
    sub: Subscriber | None = None
    gw = GatewayProcess(config, port, tmp_path / "gateway-1.log")
    gw2: GatewayProcess | None = None
    try:
        assert wait_for(lambda: (h := gw.health()) is not None and h[0] == 200, 30), gw.log()
        publish_all(broker.host, broker.port, before)
        alerts_file = tmp_path / "alerts.jsonl"
        raised = lambda: [a for a in file_alerts(alerts_file)
                          if a["kind"] == "anomaly" and a["state"] == "raised" and a["device_id"] == dev_eui(faulty)]
        assert wait_for(lambda: bool(raised()), 60), gw.log()[-3000:]
        # kill it in the middle of the burst, while uplinks are still being published to it
        publisher = threading.Thread(target=publish_all, args=(broker.host, broker.port, burst), daemon=True)
        publisher.start()
        assert wait_for(lambda: gw.metric("readings_total") >= len(before) + 1000, 60), gw.log()[-3000:]
        readings_at_kill = gw.metric("readings_total")  # a lower bound: it keeps going until the kill
        gw.signal(signal.SIGKILL)
        assert gw.wait(10) == -signal.SIGKILL
        assert readings_at_kill < len(before) + len(burst)  # killed under load: uplinks were still coming in
        publisher.join(60)  # the rest of the burst waits in the gateway's persistent session
        assert not publisher.is_alive()

        accepted = outbox_alert_keys(tmp_path / "state" / "outbox.sqlite") | {a["key"] for a in file_alerts(alerts_file)}
        assert {a["key"] for a in raised()} <= accepted
        publish_all(broker.host, broker.port, after)  # while the gateway is dead

        alert_broker.start()
        sub = Subscriber(alert_broker)
        gw2 = GatewayProcess(config, port, tmp_path / "gateway-2.log")
        assert wait_for(lambda: accepted <= {m["key"] for m in sub.received()}, 60), (
            accepted - {m["key"] for m in sub.received()}, gw2.log()[-3000:])
        replayed = [m for m in sub.received() if m["key"] in accepted]
        assert all(m["replay"] for m in replayed), replayed
        # the uplinks published while it was dead (and those still on the broker at the kill)
        assert wait_for(lambda: gw2.metric("readings_total") >= len(after), 60), gw2.log()[-3000:]
        # after the restart: the ingest log's records after the checkpoint again, then what the
        # broker still held (redeliveries of acknowledged-durable uplinks dropped and counted)
        assert wait_for(lambda: gw2.metric("ingest_queue_depth") == 0 and gw2.metric("readings_total") ==
                        gw2.metric("uplinks_received_total") + gw2.metric("ingest_log_replayed_total")
                        - gw2.metric("uplinks_duplicate_total"), 30)
        total = readings_at_kill + gw2.metric("readings_total")
        print(f"accepted alerts {len(accepted)} all delivered after restart; readings before kill "
              f"{readings_at_kill:.0f} + after restart {gw2.metric('readings_total'):.0f} = {total:.0f} "
              f"of {len(uplinks)} published")
        assert gw2.metric("uplinks_quarantined_total") == 0
        gw2.signal(signal.SIGTERM)
        assert gw2.wait(30) == 0
    finally:
        gw.close()
        if gw2 is not None:
            gw2.close()
        if sub is not None:
            sub.close()
        alert_broker.stop()

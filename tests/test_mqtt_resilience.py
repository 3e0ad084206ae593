"""MQTT source against a real broker: restart with a persistent session, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.test_e2e_mqtt import make_gateway, wait_for
from tests.uplink_factory import chirpstack_v4, dev_eui, field_uplinks, lpp, publish_all


def test_uplinks_published_while_stopped_arrive_after_restart(broker, tmp_path: Path) -> None:
    gw = make_gateway(broker, tmp_path)
    gw.start()
    assert gw.sources[0].connected()
    first = field_uplinks(devices=2, readings=20)
    publish_all(broker.host, broker.port, first)
    assert wait_for(lambda: gw.metrics.get("readings_total") == len(first))
    gw.stop()

    later = field_uplinks(devices=2, readings=50, first=20)  # published while the gateway is down
    publish_all(broker.host, broker.port, later)

    gw2 = make_gateway(broker, tmp_path)
    gw2.start()
    try:
        assert wait_for(lambda: gw2.metrics.get("readings_total") == len(later), 30), gw2.metrics.snapshot()
        assert gw2.metrics.get("uplinks_quarantined_total") == 0
    finally:
        gw2.stop()


def test_bad_input_is_counted_by_reason_and_the_gateway_keeps_going(broker, tmp_path: Path) -> None:
    gw = make_gateway(broker, tmp_path)
    gw.start()
    try:
        topic = f"application/app-1/device/{dev_eui(9)}/event/up"
        good = chirpstack_v4(dev_eui(9), 1.7e9, 1, lpp(20.0, 50.0))
        nan_body = json.dumps({"device_id": "plain-1", "values": {"t": math.nan}}).encode()
        bad: list[tuple[str, bytes | dict]] = [
            (topic, b"\x00\xff\xfe garbage \x9c"),
            (topic, b'{"deviceInfo": {"devEui": "0101'),  # truncated JSON
            (topic, b"[1, 2, 3]"),
            ("application/app-1/device/x/event/up", json.dumps({"hello": "world"}).encode()),
            (topic, dict(good, data="!!!not base64!!!")),
            (topic, dict(good, data="AWf/")),  # LPP temperature cut short
            (topic, b"x" * 200_000),
            ("v3/app/devices/plain/up", nan_body),
        ]
        publish_all(broker.host, broker.port, bad)
        good_uplinks = field_uplinks(devices=2, readings=10)
        publish_all(broker.host, broker.port, good_uplinks)
        assert wait_for(lambda: gw.metrics.get("readings_total") == len(good_uplinks), 20), gw.metrics.snapshot()
        m = gw.metrics
        rejected = m.get("uplinks_rejected_total")
        quarantined = m.get("uplinks_quarantined_total")
        assert rejected + quarantined == len(bad), m.snapshot()
        assert m.get("uplinks_rejected_total", reason="too_large") == 1
        assert m.get("uplinks_rejected_total", reason="malformed_json") >= 2
        assert m.get("uplinks_rejected_total", reason="bad_base64") == 1
        assert quarantined >= 1  # the truncated LPP payload, kept with its bytes
        lines = (tmp_path / "state" / "quarantine.jsonl").read_text().splitlines()
        assert any(json.loads(x)["payload_hex"] == "0167ff" for x in lines), lines
        assert gw.pipeline is not None and gw.pipeline._thread is not None and gw.pipeline._thread.is_alive()
    finally:
        gw.stop()

"""Replays keep their own time: while days of backlog drain through the pipeline, silence is
judged on the stream's clock (each reading's own timestamp), not on the wall clock, so only
a device that really went quiet in the backlog is found silent, at its own time."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import validate_config
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.service import Gateway
from plugins.sources.mqtt.shapes import parse_uplink
from tests.uplink_factory import dev_eui, field_uplinks


def test_a_draining_backlog_raises_device_silent_only_for_the_device_that_went_quiet(tmp_path: Path) -> None:
    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    config = validate_config({
        "gateway": {"id": "gw-replay", "state_dir": str(tmp_path / "state")},
        "profiles": [{"name": "lpp-nodes", "match_name": "node-*", "codec": "cayenne_lpp",
                      "battery_field": "voltage_3", "expected_interval_s": 600}],
        "model": {"calibration_steps": 160, "calibration_windows": 160},
        "alerts": {"silent_factor": 3.0, "silent_min_s": 600},
        "metrics": {"listen": None},
    }, registry)
    gw = Gateway(config, pm, registry)
    gw.start()
    p = gw.pipeline
    assert p is not None
    p.stop()  # driven from this thread, the check every 50 uplinks as the loop's periodic job does
    try:
        quiet = 2
        backlog = [(topic, body) for topic, body in field_uplinks(devices=4, readings=432, seed=9)  # 3 days, 10 min apart
                   if not (body["deviceInfo"]["devEui"] == dev_eui(quiet) and body["fCnt"] >= 200)]
        silent = []
        lag = []
        for i, (topic, body) in enumerate(backlog):
            p._handle(parse_uplink(topic, json.dumps(body).encode(), "chirpstack_v4"))
            if i % 50 == 0:
                lag.append(p.now() - p.stream_now())
                silent += [a for a in p.policy.check_silent(p.stream_now()) if a.state == "raised"]
        assert max(lag) > 2 * 86400  # the stream's clock was days behind the wall clock
        assert [a.device_id for a in silent] == [dev_eui(quiet)]
        # found silent at its own time: within a few check steps of going quiet, not at the end
        assert silent[0].timestamp - silent[0].details["last_seen"] < 3 * 600 + 50 * 600 / 4 * 2
    finally:
        gw.stop()

"""The chunk path decides as the per-reading path did: the same scores, details and alerts on
the same seeded input, with the real bundled model on ONNX Runtime.

Reference ("old path"): one uplink at a time, the level stepped at each reading
(``InferenceEngine.observe`` without deferral), windows scored by ``InferenceEngine.score`` and
each score fed to ``AlertPolicy.on_score``: every window scored before the next reading (the
exact per-device sequence) against the chunk path with its level steps deferred, and in
batches of ``max_batch`` against the chunk path stepping at the reading.
New: ``Pipeline._handle_chunk`` over seeded chunks of 1-60 uplinks (level steps deferred to
the batch, ``columns.apply_follows``; scores as columns; ``policy_batch.on_scores``). Devices
repeat within a batch (6 devices, batches of 16), so the per-device rounds are exercised.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config import validate_config
from gateway.pipeline.batching import Batcher
from gateway.pipeline.inference import DueWindow
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.service import Gateway
from gateway.types import Alert, RawUplink
from plugins.sources.mqtt.shapes import parse_uplink
from tests.uplink_factory import Fault, field_uplinks

MAX_BATCH = 16


def _gateway(state_dir: Path) -> Gateway:
    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    config = validate_config({
        "gateway": {"id": "gw-columnar", "state_dir": str(state_dir)},
        "profiles": [{"name": "lpp-nodes", "match_name": "node-*", "codec": "cayenne_lpp", "battery_field": "voltage_3"}],
        "model": {"calibration_steps": 96, "calibration_windows": 96},
        "batcher": {"max_batch": MAX_BATCH, "max_delay_ms": 10000},
        "metrics": {"listen": None},
    }, registry)
    gw = Gateway(config, pm, registry)
    gw.start()
    assert gw.pipeline is not None
    gw.pipeline.stop()  # driven from this thread
    return gw


def _uplinks() -> list[RawUplink]:
    msgs = field_uplinks(devices=6, readings=420, interval_s=300.0, seed=11, fault=Fault(device=2, start=250, end=330, shift=9.0))
    return [parse_uplink(topic, json.dumps(body).encode(), "chirpstack_v4") for topic, body in msgs]


def _alert_key(a: Alert) -> tuple[Any, ...]:
    return (a.device_id, a.kind, a.state, a.timestamp, a.key, a.severity, a.message, a.score,
            json.dumps(a.details, sort_keys=True, default=str))


@pytest.mark.parametrize("defer", [False, True])
def test_chunk_path_scores_and_alerts_equal_the_per_reading_path(tmp_path: Path, defer: bool) -> None:
    ups = _uplinks()
    old_gw, new_gw = _gateway(tmp_path / "old"), _gateway(tmp_path / "new")
    try:
        # ---- old path -------------------------------------------------------------------
        p = old_gw.pipeline
        assert p is not None
        old_alerts: list[Alert] = []
        old_scores: list[tuple[str, float, float, dict[str, Any]]] = []
        # with the level steps deferred the chunk path is exact: each window is scored as if
        # alone (device rounds), so the reference scores every window before the next
        # reading; with them at the reading, both paths cut batches of MAX_BATCH
        batcher: Batcher[DueWindow] = Batcher(1 if defer else MAX_BATCH, 10000.0)

        def score_old(windows: list[DueWindow]) -> None:
            for due, score, details in p.engine.score(windows):
                old_alerts.extend(p.policy.on_score(due.window.device_id, due.timestamp, score, details))
                old_scores.append((due.window.device_id, due.timestamp, score, details))

        for up in ups:
            decoded = p.decoder.decode(up)
            assert decoded is not None
            reading, profile = decoded
            field = profile.battery_field
            old_alerts.extend(p.policy.on_reading(reading, reading.values.get(field) if field else None))
            window = p.windows.add(reading, list(profile.channels) if profile.channels else None, profile.adapter,
                                   exclude=field)
            due = p.engine.observe(window)
            assert due is None or not due.follow
            if due is not None:
                full = batcher.add(due)
                if full:
                    score_old(full)
        score_old(batcher.take())

        # ---- chunk path -----------------------------------------------------------------
        q = new_gw.pipeline
        assert q is not None
        new_alerts: list[Alert] = []
        new_scores: list[tuple[str, float, float, dict[str, Any]]] = []

        class Scores:
            def observe_score(self, device_id: str, timestamp: float, score: float, details: dict[str, Any]) -> None:
                new_scores.append((device_id, timestamp, score, details))

        q.defer_level_steps = defer
        q.score_observers = (Scores(),)
        q.publish_alerts = new_alerts.extend  # type: ignore[method-assign]
        rng = random.Random(5)
        i = 0
        while i < len(ups):
            n = rng.randint(1, 60)
            q._handle_chunk(ups[i:i + n], None)
            i += n
        q._flush()
    finally:
        old_gw.stop()
        new_gw.stop()

    assert len(old_scores) > 1500
    assert [s[:3] for s in new_scores] == [s[:3] for s in old_scores]
    assert [s[3] for s in new_scores] == [s[3] for s in old_scores]
    raised = [a for a in old_alerts if a.kind == "anomaly" and a.state == "raised"]
    assert raised and any(a.state == "cleared" for a in old_alerts if a.kind == "anomaly")
    assert [_alert_key(a) for a in new_alerts] == [_alert_key(a) for a in old_alerts]
    # and the level each device ended at
    for dev in p.windows.devices():
        other = q.windows.get(dev.device_id)
        assert other is not None
        a, b = dev.state, other.state
        assert np.array_equal(a.norm, b.norm) and np.array_equal(a.level.offset, b.level.offset)  # type: ignore[union-attr]


def test_a_window_is_standardised_with_its_own_readings_level_whatever_shares_its_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's input for a window must not depend on how the batcher cut the stream: a
    window standardised with the device's level at batch time would see the level steps of
    the later readings in its batch (the timing-dependent alerts once seen in the cluster
    test). Every window's model input is the same fed one uplink at a time and scored
    alone, and through the chunk path in batches of 16 where each device repeats."""
    import gateway.pipeline.inference as inference

    ups = _uplinks()
    real = inference.standardize
    inputs: list[dict[tuple[str, float], np.ndarray]] = [{}, {}]

    def capture(due: list[DueWindow], run: int) -> np.ndarray:
        x = real(due)
        for d, z in zip(due, x, strict=True):
            inputs[run][(d.window.device_id, d.timestamp)] = z
        return x

    alone, chunked = _gateway(tmp_path / "alone"), _gateway(tmp_path / "chunked")
    try:
        monkeypatch.setattr(inference, "standardize", lambda due: capture(due, 0))
        p = alone.pipeline
        assert p is not None
        for up in ups:
            decoded = p.decoder.decode(up)
            assert decoded is not None
            reading, profile = decoded
            window = p.windows.add(reading, list(profile.channels) if profile.channels else None, profile.adapter,
                                   exclude=profile.battery_field)
            due = p.engine.observe(window)
            if due is not None:
                p.engine.score([due])
        monkeypatch.setattr(inference, "standardize", lambda due: capture(due, 1))
        q = chunked.pipeline
        assert q is not None and q.defer_level_steps
        q.publish_alerts = lambda alerts: None  # type: ignore[method-assign,assignment]
        for start in range(0, len(ups), 48):  # 8 readings of each of the 6 devices per chunk
            q._handle_chunk(ups[start:start + 48], None)
        q._flush()
    finally:
        alone.stop()
        chunked.stop()
    one, many = inputs
    assert one.keys() == many.keys() and len(one) > 1500
    assert all(np.array_equal(one[k], many[k]) for k in one)

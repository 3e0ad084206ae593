"""Device state handed between cluster workers (``gateway.pipeline.handoff``): a full dump
and the deltas after it install as one, newest record per device; a dump cut short is
refused; forgetting drops a device everywhere. Real model, engine, windows and policy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.pipeline.handoff import HandoffFormatError, PipelineHandoff, split_dump
from models.manifest import base_model_dir
from models.runtime import ModelRuntime
from tests.test_state_codec import DEVICES, STEPS, Parts, readings


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return ModelRuntime.load(base_model_dir(), ["cpu"])


def handoff(parts: Parts) -> PipelineHandoff:
    pipeline = SimpleNamespace(windows=parts.store, policy=parts.policy)
    return PipelineHandoff(pipeline, parts.metrics, codec=parts.codec)  # type: ignore[arg-type]


def test_a_full_dump_and_its_deltas_restore_the_newest_state_of_every_device(runtime: ModelRuntime) -> None:
    straight, first = Parts(runtime), Parts(runtime)
    out = handoff(first)
    dumps = []
    history = readings(0, STEPS + 40)
    for chunk in range(0, len(history), 60):  # a checkpoint every 60 readings: full first, then deltas
        part = history[chunk:chunk + 60]
        straight.feed(part)
        first.feed(part)
        changed = DEVICES if not dumps else sorted({r.device_id for r in part})
        dumps.append(out.dump(changed))
    assert [d for d, _ in split_dump(dumps[0])] == DEVICES
    restored = Parts(runtime)
    handoff(restored).restore(dumps)
    assert restored.metrics.get("handoff_restore_seconds_total") > 0
    later = readings(STEPS + 40, STEPS + 90, shift_from=STEPS + 60)
    got, expected = restored.feed(later), straight.feed(later)
    assert got == expected and any(keys for _, _, keys in got)  # scored from the first reading, same alert keys
    # the oldest dump alone is not the newest state: the merge matters
    stale = Parts(runtime)
    handoff(stale).restore(dumps[:1])
    assert stale.feed(readings(STEPS + 40, STEPS + 90, shift_from=STEPS + 60)) != expected


def test_a_cut_dump_is_refused_and_the_other_dumps_still_install(runtime: ModelRuntime) -> None:
    first = Parts(runtime)
    first.feed(readings(0, 20))
    blob = handoff(first).dump(DEVICES)
    for cut in (blob[:3], blob[:-1], blob[:4] + b"\xff"):
        with pytest.raises(HandoffFormatError):
            split_dump(cut)
    restored = Parts(runtime)
    handoff(restored).restore([blob[:-1], handoff(first).dump(DEVICES[:2])])
    assert restored.metrics.get("handoff_dumps_unreadable_total") == 1
    assert sorted(w.device_id for w in restored.store.devices()) == DEVICES[:2]


def test_forget_drops_windows_and_alert_state(runtime: ModelRuntime) -> None:
    parts = Parts(runtime)
    parts.feed(readings(0, 10))
    h = handoff(parts)
    h.forget(DEVICES[:3])
    assert sorted(w.device_id for w in parts.store.devices()) == DEVICES[3:]
    assert sorted(parts.policy.device_ids()) == DEVICES[3:]
    h.forget_all()
    assert len(parts.store) == 0 and parts.policy.device_ids() == []
    assert parts.metrics.get("handoff_devices_forgotten_total") == 5

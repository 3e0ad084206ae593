"""gateway.pipeline.windows: the per-device ring against a plain list model, shared channel layouts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.metrics import Metrics
from gateway.pipeline.windows import MAX_SHARED_LAYOUTS, DeviceWindow, WindowStore
from gateway.types import Reading

CHANNELS = ["a", "b", "c"]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.lists(st.sets(st.sampled_from(CHANNELS + ["extra"])), max_size=30))
def test_ring_matches_a_list_model(length: int, readings: list[set[str]]) -> None:
    w = DeviceWindow("d", CHANNELS, length)
    last = [0.0] * len(CHANNELS)
    rows: list[list[float]] = []
    masks: list[list[float]] = []
    for k, present in enumerate(readings):
        values = {ch: float(10 * k + i) for i, ch in enumerate(CHANNELS + ["extra"]) if ch in present}
        row, unknown = w.push(values, float(k))
        last = [values.get(ch, last[i]) for i, ch in enumerate(CHANNELS)]  # missing: repeat the last value
        rows.append(last)
        masks.append([1.0 if ch in values else 0.0 for ch in CHANNELS])
        assert unknown == ("extra" in values)
        assert row.tolist() == last and w.latest().tolist() == last
        assert w.count == k + 1 and w.last_timestamp == float(k)
        if w.full:
            assert w.values().tolist() == rows[-length:]
            assert w.mask().tolist() == masks[-length:]


def test_devices_with_the_same_channels_share_one_layout() -> None:
    store = WindowStore(4, 10, Metrics())
    a = store.add(Reading("a", 0.0, {"t": 1.0, "h": 2.0}))
    b = store.add(Reading("b", 0.0, {"h": 3.0, "t": 4.0}))
    c = store.add(Reading("c", 0.0, {"t": 1.0}))
    assert a.channels == ["h", "t"] and a.channels is b.channels and a._index is b._index
    assert c.channels == ["t"] and c.channels is not a.channels
    assert b.latest().tolist() == [3.0, 4.0]


def test_shared_layouts_are_bounded() -> None:
    store = WindowStore(4, MAX_SHARED_LAYOUTS + 10, Metrics())
    for i in range(MAX_SHARED_LAYOUTS + 5):
        store.add(Reading(f"d{i}", 0.0, {f"ch{i}": 1.0}))
    assert len(store._layouts) == MAX_SHARED_LAYOUTS
    w = store.add(Reading("late", 0.0, {"zz": 2.0}))
    assert w.channels == ["zz"] and w.latest().tolist() == [2.0]

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


DEVICE_CHANNELS = {f"d{i}": CHANNELS[: 1 + i % 3] for i in range(7)}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4),
       st.lists(st.tuples(st.sampled_from(sorted(DEVICE_CHANNELS)), st.sampled_from(["push", "push", "push", "remove", "reimport"]),
                          st.sets(st.sampled_from(CHANNELS))), max_size=60))
def test_the_ring_arrays_hold_what_private_rings_hold(length: int, max_devices: int,
                                                     ops: list[tuple[str, str, set[str]]]) -> None:
    """One ring array per channel count, rows reused after eviction and removal, against
    one private ring per device (the model): the same values, masks and exported state;
    a handle the store let go keeps reading its own values."""
    store = WindowStore(length, max_devices, Metrics())
    model: dict[str, DeviceWindow] = {}
    let_go: list[tuple[DeviceWindow, list[list[float]]]] = []
    for k, (dev, op, present) in enumerate(ops):
        held = store.get(dev)
        if op == "remove" or (op == "reimport" and held is None):
            if held is not None:
                let_go.append((held, held.values().tolist()))
            assert store.remove(dev) == (dev in model)
            model.pop(dev, None)
            continue
        if op == "reimport":
            state = {key: (v.copy() if key == "values" else v) for key, v in held.export_state().items()}  # type: ignore[union-attr]
            again = store.import_window(dev, state)
            assert again is not None and again is not held
            let_go.append((held, held.values().tolist()))  # type: ignore[union-attr]
            continue
        chans = DEVICE_CHANNELS[dev]
        values = {ch: float(100 * k + i) for i, ch in enumerate(CHANNELS) if ch in present or ch == chans[0]}
        window = store.add(Reading(dev, float(k), values), list(chans))
        if dev not in model:
            model[dev] = DeviceWindow(dev, list(chans), length)
        model[dev].push(values, float(k))
        for gone in [d for d in model if store.get(d) is None]:  # evicted
            del model[gone]
        assert window.latest().tolist() == model[dev].latest().tolist()
    assert sorted(model) == sorted(w.device_id for w in store.devices())
    for w in store.devices():
        ref = model[w.device_id]
        assert w.values().tolist() == ref.values().tolist() and w.mask().tolist() == ref.mask().tolist()
        mine, theirs = w.export_state(), ref.export_state()
        assert mine["values"].tolist() == theirs["values"].tolist()
        assert {k: v for k, v in mine.items() if k != "values"} == {k: v for k, v in theirs.items() if k != "values"}
    rows = {c: ring.rows_used for c, ring in store.ring_arrays().items()}
    assert rows == {c: sum(len(w.channels) == c for w in store.devices()) for c in rows}
    for handle, values_then in let_go:
        assert handle.values().tolist() == values_then


def test_a_ring_array_grows_and_reuses_rows_zeroed() -> None:
    store = WindowStore(3, 300, Metrics())
    for i in range(200):
        store.add(Reading(f"d{i}", 0.0, {"t": float(i + 1)}))
    ring = store.ring_arrays()[1]
    assert ring.rows_used == 200 and 200 <= len(ring.values) <= 301
    assert [store.get(f"d{i}").latest().tolist() for i in range(200)] == [[float(i + 1)] for i in range(200)]  # type: ignore[union-attr]
    for k in range(3):  # d7's whole ring written: the next device on its row must not see it
        store.add(Reading("d7", float(k), {"t": 70.0 + k}))
    assert store.remove("d7")
    again = store.add(Reading("new", 0.0, {"t": 5.0}))
    assert ring.rows_used == 200 and again._row == 7
    assert again.export_state()["values"].tolist() == [[5.0], [0.0], [0.0]]

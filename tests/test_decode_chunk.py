"""Decoding a chunk: batch decoders per codec, the per-uplink path for the rest; the same
readings, rejects and reasons as decoding one uplink at a time."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from gateway.hookspecs import hookimpl
from gateway.ingest.decoding import UplinkDecoder
from gateway.ingest.profiles import ProfileConfig, ProfileSet
from gateway.ingest.quarantine import Quarantine
from gateway.metrics import Metrics
from gateway.plugin_manager import make_plugin_manager
from gateway.types import RawUplink
from tests.uplink_factory import lpp

PROFILES = [ProfileConfig(name="lpp", match_name="lpp-*", codec="cayenne_lpp", battery_field="voltage_3"),
            ProfileConfig(name="json", match_name="json-*", codec="json")]


def _chunk(seed: int) -> list[RawUplink]:
    rng = random.Random(seed)
    out = []
    for i in range(300):
        kind = rng.random()
        if kind < 0.6:
            payload, name = lpp(rng.uniform(-5, 40), rng.uniform(10, 90)), f"lpp-{i % 7}"
        elif kind < 0.7:
            payload, name = lpp(20.0, 50.0)[: rng.randint(1, 9)], f"lpp-{i % 7}"  # truncated
        elif kind < 0.75:
            payload, name = b"\x01\x99\x00", f"lpp-{i % 7}"  # unknown LPP type
        elif kind < 0.9:
            payload, name = f'{{"t": {rng.uniform(0, 9):.3f}}}'.encode(), f"json-{i % 3}"
        else:
            payload, name = b"{nope", f"json-{i % 3}"
        out.append(RawUplink(device_id=f"{i % 11:016x}", received_at=1.7e9 + i, payload=payload, f_port=2, f_cnt=i,
                             device_name=name))
    return out


def _decoder(tmp: Path, pm: Any = None) -> tuple[UplinkDecoder, Metrics]:
    metrics = Metrics()
    pm = pm or make_plugin_manager(load_entry_points=False)
    return UplinkDecoder(pm, ProfileSet(PROFILES), Quarantine(tmp / "q.jsonl", metrics)), metrics


def _same(tmp: Path, pm_a: Any = None, pm_b: Any = None) -> None:
    ups = _chunk(3)
    (tmp / "a").mkdir(parents=True, exist_ok=True)
    (tmp / "b").mkdir(parents=True, exist_ok=True)
    one, m1 = _decoder(tmp / "a", pm_a)
    many, m2 = _decoder(tmp / "b", pm_b)
    ref = [one.decode(u) for u in ups]
    got = many.decode_chunk(ups)
    assert got == ref
    assert sum(r is None for r in ref) > 30 and sum(r is not None for r in ref) > 150
    assert m1.counters() == m2.counters()  # quarantined by the same reasons


def test_decode_chunk_equals_decode_one_by_one(tmp_path: Path) -> None:
    _same(tmp_path)


class _Lengths:
    """Codec ``length``: the payload's length; its batch decoder raises on every other call."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def lora_gateway_codecs(self) -> list[str]:
        return ["length"]

    @hookimpl
    def lora_gateway_decode(self, uplink: RawUplink, codec: str | None) -> dict[str, Any] | None:
        return {"n": float(len(uplink.payload))} if codec == "length" else None

    @hookimpl
    def lora_gateway_decode_batch(self, uplinks: list[RawUplink], codec: str) -> Any:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("boom")
        return [{"n": float(len(u.payload))} for u in uplinks]


def test_a_plugin_batch_decoder_and_its_failure(tmp_path: Path) -> None:
    pm_a, pm_b = make_plugin_manager(load_entry_points=False), make_plugin_manager(load_entry_points=False)
    plugin = _Lengths()
    pm_a.register(_Lengths(), name="lengths")
    pm_b.register(plugin, name="lengths")
    PROFILES.insert(0, ProfileConfig(name="len", match_name="json-1", codec="length"))
    try:
        _same(tmp_path, pm_a, pm_b)  # first chunk: the batch raised, every uplink decoded one by one
        _same(tmp_path / "again", pm_a, pm_b)  # second: the batch answered
    finally:
        PROFILES.pop(0)
    assert plugin.calls == 2

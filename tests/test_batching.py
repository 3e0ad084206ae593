"""Provider-aware batching: the shipped table, "auto" in the config, the batcher's deadline
(on a fake clock), and doctor's lines. No timings here: bench/batch_table.py measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import BatcherSection, ConfigError, validate_config
from gateway.pipeline.batching import (
    CPU,
    TABLE_PATH,
    Batcher,
    BatchTableError,
    Row,
    choose_from_rows,
    load_table,
    parse_table,
    resolve_batching,
)
from gateway.plugin_manager import Registry, make_plugin_manager

CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


def _shipped() -> dict:
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


# ---- the shipped table ---------------------------------------------------------------------
def test_shipped_table_has_measured_cpu_and_documented_cuda_entries() -> None:
    raw = _shipped()["providers"]
    assert raw[CPU]["measured"] is True and raw[CPU]["source"].startswith("measured by bench/batch_table.py")
    assert raw[CUDA]["measured"] is False and "not reproduced" in raw[CUDA]["source"]
    # the H200 windows/s, as published
    assert {r["batch"]: r["windows_per_s"] for r in raw[CUDA]["rows"]} == {
        1: 3243, 64: 236988, 1024: 2609287, 8192: 10179160}


def test_shipped_choices_are_the_rule_applied_to_the_rows() -> None:
    table = load_table()
    for name, entry in table.entries.items():
        assert choose_from_rows(entry.rows) == (entry.max_batch, entry.max_delay_ms), name
    # the GPU's best batch is far larger than the CPU's
    assert table.entries[CUDA].max_batch > table.entries[CPU].max_batch


# ---- "auto" ----------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", [CPU, CUDA])
def test_auto_resolves_to_the_tables_values_per_provider(provider: str) -> None:
    raw = _shipped()["providers"][provider]
    choice = resolve_batching("auto", "auto", provider)
    assert (choice.max_batch, choice.max_delay_ms) == (raw["max_batch"], raw["max_delay_ms"])
    assert choice.provider == provider and f"table entry {provider}" in choice.source


def test_tensorrt_uses_cudas_entry_and_unknown_providers_the_cpus() -> None:
    raw = _shipped()["providers"]
    trt = resolve_batching("auto", "auto", TRT)
    assert (trt.max_batch, trt.max_delay_ms) == (raw[CUDA]["max_batch"], raw[CUDA]["max_delay_ms"])
    assert "has no entry of its own" in trt.source
    ov = resolve_batching("auto", "auto", "OpenVINOExecutionProvider")
    assert (ov.max_batch, ov.max_delay_ms) == (raw[CPU]["max_batch"], raw[CPU]["max_delay_ms"])
    assert "CPUExecutionProvider's is used" in ov.source


def test_numbers_in_the_config_win_key_by_key() -> None:
    raw = _shipped()["providers"][CUDA]
    both = resolve_batching(16, 7.5, CUDA)
    assert (both.max_batch, both.max_delay_ms, both.source) == (16, 7.5, "[batcher] config")
    mixed = resolve_batching(16, "auto", CUDA)
    assert (mixed.max_batch, mixed.max_delay_ms) == (16, raw["max_delay_ms"])
    assert "for max_delay_ms" in mixed.source and "max_batch" not in mixed.source.split("(")[0]


def test_config_batcher_defaults_to_auto_and_refuses_bad_values_in_one_line_each() -> None:
    assert BatcherSection().max_batch == "auto" and BatcherSection().max_delay_ms == "auto"
    assert BatcherSection(max_batch=8, max_delay_ms=2).max_batch == 8
    registry = Registry(make_plugin_manager(load_entry_points=False))
    with pytest.raises(ConfigError) as err:
        validate_config({"batcher": {"max_batch": "big", "max_delay_ms": -1}}, registry)
    assert len(err.value.errors) == 2
    assert err.value.errors[0].startswith("batcher.max_batch: ") and '"auto" or an integer' in err.value.errors[0]
    assert err.value.errors[1].startswith("batcher.max_delay_ms: ")


def test_a_malformed_table_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text('{"format": 1, "providers": {"CPUExecutionProvider": {"rows": []}}}')
    with pytest.raises(BatchTableError, match="CPUExecutionProvider: malformed entry") as err:
        load_table(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(BatchTableError, match="format"):
        parse_table({"providers": {}})


# ---- the rule --------------------------------------------------------------------------------
def test_rule_picks_the_smallest_batch_near_the_best_and_a_deadline_from_the_fixed_cost() -> None:
    rows = [Row(1, 30_000, 0.033), Row(64, 200_000, 0.32), Row(256, 290_000, 0.88), Row(1024, 300_000, 3.4),
            Row(8192, 310_000, 26.0)]  # 8192 is the fastest but one call takes too long
    assert choose_from_rows(rows) == (256, 1.0)  # 290k >= 0.9 * 300k; deadline floor 1 ms
    gpu = [Row(1, 3_000, 0.333), Row(1024, 2_600_000, 0.39), Row(8192, 10_000_000, 0.82)]
    assert choose_from_rows(gpu) == (8192, 3.33)  # the fixed cost of a call is 0.333 ms
    with pytest.raises(BatchTableError):
        choose_from_rows([])


# ---- the batcher on a fake clock ---------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_reading_at_one_per_second_decides_within_the_deadline() -> None:
    """Low rates keep low latency: each lone window runs at its deadline, never later, for
    the auto deadlines of both providers."""
    for provider in (CPU, CUDA):
        choice = resolve_batching("auto", "auto", provider)
        clock = FakeClock()
        batcher: Batcher[int] = Batcher(choice.max_batch, choice.max_delay_ms / 1000, clock)
        for reading in range(5):  # 1 msg/s
            arrived = clock.t
            assert batcher.add(reading) is None
            assert batcher.wait_s(0.5) == pytest.approx(choice.max_delay_ms / 1000)
            clock.t += choice.max_delay_ms / 1000 * 0.5
            assert batcher.due() is None  # not yet
            clock.t = arrived + choice.max_delay_ms / 1000
            assert batcher.wait_s(0.5) == 0.0
            assert batcher.due() == [reading]  # decided at the deadline
            assert len(batcher) == 0 and batcher.wait_s(0.5) == 0.5
            clock.t = arrived + 1.0


def test_a_full_batch_runs_at_once_and_the_deadline_counts_from_the_oldest() -> None:
    clock = FakeClock()
    batcher: Batcher[int] = Batcher(4, 0.01, clock)
    assert [batcher.add(i) for i in range(3)] == [None, None, None]
    assert batcher.add(3) == [0, 1, 2, 3]
    batcher.add(10)
    clock.t += 0.006
    batcher.add(11)
    assert batcher.wait_s(1.0) == pytest.approx(0.004)
    clock.t += 0.004
    assert batcher.due() == [10, 11]
    assert batcher.take() == []
    with pytest.raises(ValueError):
        Batcher(0, 0.01)


# ---- doctor ----------------------------------------------------------------------------------
def test_doctor_prints_provider_and_the_batching_it_will_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[model]\nproviders = ["cpu"]\n')
    assert main(["doctor", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    raw = _shipped()["providers"][CPU]
    assert "provider      CPUExecutionProvider\n" in out  # no GPU line when the CPU serves
    assert f"batcher       max_batch {raw['max_batch']}, deadline {raw['max_delay_ms']:g} ms (table entry CPU" in out
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[batcher]\nmax_batch = 5\nmax_delay_ms = 2\n')
    assert main(["doctor", "--config", str(cfg)]) == 0
    assert "batcher       max_batch 5, deadline 2 ms ([batcher] config)" in capsys.readouterr().out


# ---- the daemon --------------------------------------------------------------------------------
def test_the_daemon_batches_with_the_serving_providers_entry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from gateway.service import Gateway

    pm = make_plugin_manager(load_entry_points=False)
    registry = Registry(pm)
    cfg = validate_config({"gateway": {"state_dir": str(tmp_path / "state")}, "metrics": {"listen": None},
                           "model": {"providers": ["cpu"]}}, registry)
    gw = Gateway(cfg, pm, registry)
    with caplog.at_level("INFO", logger="gateway.service"):
        gw.start()
    try:
        raw = _shipped()["providers"][CPU]
        assert gw.pipeline is not None
        assert (gw.pipeline.max_batch, gw.pipeline.max_delay_s) == (raw["max_batch"], raw["max_delay_ms"] / 1000)
        assert any(r.getMessage().startswith(f"batcher: max_batch {raw['max_batch']}, deadline") for r in caplog.records)
    finally:
        gw.stop()

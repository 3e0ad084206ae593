"""Config: one schema, unknown keys refused, every error at once, docs generated from it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config, redacted, validate_config
from gateway.config_reference import REFERENCE, render
from gateway.plugin_manager import Registry, make_plugin_manager

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "gateway.example.toml"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(make_plugin_manager(load_entry_points=False))


def test_example_config_is_valid(registry: Registry) -> None:
    cfg = load_config(EXAMPLE, registry)
    assert [k for k, _, _ in cfg.source_options] == ["mqtt", "serial"]
    assert {k for k, _, _ in cfg.handler_options} == {"log", "file", "mqtt", "webhook", "homeassistant"}


def test_example_config_documents_every_key(registry: Registry) -> None:
    """Every key of the reference (core and plugin options) appears in the example, set or commented."""
    text = EXAMPLE.read_text()
    keys = set(re.findall(r"^\| `([a-z_0-9]+)` \|", REFERENCE.read_text(), re.M))
    missing = sorted(k for k in keys if not re.search(rf"(^|[\s#,{{]){k}\s*=|{k}[,:]|\.{k}\]", text, re.M))
    assert not missing, f"keys not shown in {EXAMPLE.name}: {missing}"


def test_reference_is_generated_from_the_schema(registry: Registry) -> None:
    assert REFERENCE.read_text() == render(registry), "docs/config-reference.md is stale: run python -m gateway.config_reference"


def test_every_error_reported_at_once_with_key_paths(registry: Registry) -> None:
    data = {
        "gateway": {"id": "x", "bogus": 1},
        "batcher": {"max_batch": 0},
        "sources": [{"type": "mqtt", "port": "not-a-port", "colour": "blue"}, {"type": "carrier-pigeon"}],
        "handlers": [{"type": "file"}],
        "alerts": {"raise_threshold": "high"},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(data, registry, "test.toml")
    errors = "\n".join(info.value.errors)
    for expected in ("gateway.bogus", "batcher.max_batch", "sources[0].port", "sources[0].colour",
                     "sources[1].type", "handlers[0].path", "alerts.raise_threshold"):
        assert expected in errors, errors
    assert len(info.value.errors) >= 7
    # pydantic says "Extra inputs are not permitted"; a reader of a config file means "unknown key"
    assert "gateway.bogus: unknown key" in errors and "sources[0].colour: unknown key" in errors, errors
    assert "Extra inputs" not in errors


def test_config_check_exits_1_before_any_io(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    state = tmp_path / "must-not-exist"
    bad.write_text(f'[gateway]\nstate_dir = "{state}"\nunknown_key = 1\n[[sources]]\ntype = "mqtt"\nport = 99999\n')
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "gateway.unknown_key" in err and "sources[0].port" in err
    assert main(["run", "--config", str(bad)]) == 1
    assert not state.exists()
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\n")
    assert main(["config", "check", str(broken)]) == 1
    assert "not valid TOML" in capsys.readouterr().err


def test_secrets_come_from_env_and_are_redacted(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    cfg = validate_config(data, registry)
    shown = str(redacted(cfg.handler_options[3][2]))
    assert "WEBHOOK_SECRET" in shown  # the variable's name may be shown, never a value
    assert redacted({"password": "hunter2", "password_env": "X"}) == {"password": "***", "password_env": "X"}


def test_config_check_subprocess_on_example() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "check", str(EXAMPLE)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_doctor_reports_provider_choice_and_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[model]\nproviders = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n')
    assert main(["doctor", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "serving on CPUExecutionProvider" in out
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider: not available" in out
    assert "result        OK" in out

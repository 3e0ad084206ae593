"""``doctor`` makes run's checks without changing anything on disk, and fails where ``run``
fails; ``run`` logs a short config summary at INFO (the whole config only at DEBUG)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.cli import main


def _config(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    state = tmp_path / "state" / "not-yet"
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nid = "t"\nstate_dir = "{state}"\n[metrics]\nlisten = "127.0.0.1:0"\n{extra}')
    return path, state


def test_doctor_fails_where_run_fails_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "north-field.onnx_adapter"
    path, state = _config(tmp_path, f'[model]\nadapters = {{ north-field = "{missing}" }}\n')
    assert main(["doctor", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "model         FAILED:" in out and "adapter file not found" in out, out
    assert "does not exist yet; run creates it" in out
    assert not state.exists() and not state.parent.exists()  # doctor wrote nothing
    assert main(["run", "--config", str(path), "--duration", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "adapter file not found" in err


def test_doctor_checks_the_operator_token_and_secrets_as_run_needs_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OP_TOKEN_FOR_TEST", raising=False)
    path, state = _config(tmp_path, '[status]\noperator_token_env = "OP_TOKEN_FOR_TEST"\n')
    assert main(["doctor", "--config", str(path)]) == 1
    assert "environment variable OP_TOKEN_FOR_TEST (operator_token_env) is not set" in capsys.readouterr().out
    assert not state.exists()
    assert main(["run", "--config", str(path), "--duration", "0.1"]) == 1
    assert "OP_TOKEN_FOR_TEST" in capsys.readouterr().err
    monkeypatch.setenv("OP_TOKEN_FOR_TEST", "x")
    assert main(["doctor", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "operator token set" in out and "result        OK" in out


def test_run_logs_a_summary_at_info_and_the_full_config_at_debug(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, _ = _config(tmp_path, '[[handlers]]\ntype = "file"\npath = "alerts.jsonl"\n')
    with caplog.at_level(logging.INFO, logger="gateway.cli.run"):
        assert main(["run", "--config", str(path), "--duration", "0.2"]) == 0
    info = [r.getMessage() for r in caplog.records if r.name == "gateway.cli.run" and r.levelno == logging.INFO]
    assert len(info) == 1 and info[0].startswith("configuration: gateway t, state ")
    assert "handlers: file" in info[0] and len(info[0]) < 500, info[0]
    assert not any("(full)" in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)

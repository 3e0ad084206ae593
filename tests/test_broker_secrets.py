"""``read_secret``: the one reader of ``*_env`` / ``*_file`` password options (MQTT and RabbitMQ)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.broker.options import read_secret
from plugins.sources.rabbitmq.options import RabbitSourceOptions


def test_env_then_file_then_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("  s3cret  \nignored\n")
    monkeypatch.setenv("GW_PW", "from-env")
    assert read_secret("GW_PW", secret) == "from-env"
    assert read_secret(None, secret) == "s3cret"
    assert read_secret(None, None) is None
    (tmp_path / "empty").write_text("")
    assert read_secret(None, tmp_path / "empty") == ""  # was an IndexError for the MQTT options


@pytest.mark.parametrize(("env", "file", "match"), [
    ("GW_UNSET_PW", None, "GW_UNSET_PW"),
    (None, Path("/nonexistent/pw"), "password_file /nonexistent/pw"),
])
def test_unusable_settings_are_one_line_errors(env: str | None, file: Path | None, match: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_UNSET_PW", raising=False)
    with pytest.raises(ValueError, match=match):
        read_secret(env, file)


def test_rabbitmq_source_reads_through_it_and_keeps_the_guest_default(tmp_path: Path) -> None:
    assert RabbitSourceOptions().password() == "guest"
    (tmp_path / "pw").write_text("rabbit\n")
    assert RabbitSourceOptions(username="gw", password_file=tmp_path / "pw").password() == "rabbit"

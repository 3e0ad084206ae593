"""``lora-gateway alerts feedback KEY false|confirmed`` over the shared alert-feedback store
(gateway.alerts.feedback, whose own tests are in tests/test_status_tracker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.alerts.feedback import load_feedback
from gateway.cli import main


def test_cli_records_a_verdict_in_the_shared_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "feedback", "abc123", "false", "--state-dir", str(tmp_path), "--note", "valve test",
                 "--device", "7"]) == 0
    assert "alert abc123 marked false_alarm" in capsys.readouterr().out
    stored = load_feedback(tmp_path)["abc123"]
    assert stored["label"] == "false_alarm" and stored["note"] == "valve test" and stored["alert"] == {"device_id": "7"}
    assert main(["alerts", "feedback", "abc123", "confirmed", "--state-dir", str(tmp_path)]) == 0
    assert load_feedback(tmp_path)["abc123"]["label"] == "confirmed"  # the later verdict wins
    assert main(["alerts", "feedback", "no spaces", "false", "--state-dir", str(tmp_path)]) == 1
    assert "alert key must be" in capsys.readouterr().err
    assert main(["alerts", "feedback", "abc123", "confirmed"]) == 1
    assert "--state-dir DIR, or --config FILE" in capsys.readouterr().err

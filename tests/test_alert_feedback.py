"""Operator feedback on alerts (gateway.alerts.feedback) and ``lora-gateway alerts feedback``."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.alerts.feedback import FeedbackError, feedback_path, load_feedback, read_feedback, record_feedback
from gateway.cli import main


def test_verdicts_append_and_the_latest_wins(tmp_path: Path) -> None:
    assert load_feedback(tmp_path) == {}
    record_feedback(tmp_path, "k1", "false", "valve test", device_id="dev-1", timestamp=1.5)
    window = {"channels": ["t", "h"], "timestamps": [0.0, 60.0], "values": [[1.0, 2.0], [float("nan"), 3.0]]}
    stored = record_feedback(tmp_path, "k2", "CONFIRMED", window=window)
    assert stored["window"]["values"] == [[1.0, 2.0], [None, 3.0]]
    record_feedback(tmp_path, "k1", "confirmed")
    log = read_feedback(tmp_path)
    assert [e["key"] for e in log.entries] == ["k1", "k2", "k1"] and log.skipped == 0
    assert log.entries[0]["note"] == "valve test" and log.entries[0]["device_id"] == "dev-1"
    assert log.entries[0]["label"] == "false_alarm"
    assert {k: r["label"] for k, r in load_feedback(tmp_path).items()} == {"k1": "confirmed", "k2": "confirmed"}
    # a torn last line (crash mid-write) is skipped and counted, the rest still reads
    with feedback_path(tmp_path).open("a") as fh:
        fh.write('{"key": "k3", "lab')
    again = read_feedback(tmp_path)
    assert len(again.entries) == 3 and again.skipped == 1
    # the next verdict starts a fresh line after the torn one
    record_feedback(tmp_path, "k3", "confirmed")
    assert load_feedback(tmp_path)["k3"]["label"] == "confirmed"


@pytest.mark.parametrize(("key", "label", "kwargs", "match"), [
    ("", "false", {}, "alert key"),
    ("k", "maybe", {}, "label must be one of"),
    ("k", "false", {"note": "x" * 501}, "note is longer"),
    ("k", "false", {"window": {"channels": ["a"], "timestamps": [0.0], "values": [[1.0, 2.0]]}}, "one value per channel"),
])
def test_bad_feedback_is_a_clear_error(tmp_path: Path, key: str, label: str, kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(FeedbackError, match=match):
        record_feedback(tmp_path, key, label, **kwargs)
    assert load_feedback(tmp_path) == {}


def test_cli_records_a_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "feedback", "abc123", "false", "--state-dir", str(tmp_path), "--note", "n"]) == 0
    out = capsys.readouterr().out
    assert "alert abc123 marked false_alarm, no readings kept for this key" in out
    assert load_feedback(tmp_path)["abc123"]["label"] == "false_alarm"
    assert main(["alerts", "feedback", "abc123", "confirmed"]) == 1
    assert "--state-dir DIR, or --config FILE" in capsys.readouterr().err

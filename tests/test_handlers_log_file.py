"""log and file alert handlers: output, errors, rotation, registration, end to end."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.alerts.dispatcher import Dispatcher
from gateway.alerts.outbox import Outbox
from gateway.contracts import AlertHandler, DeliveryError, PluginContext
from gateway.metrics import Metrics
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.types import Alert
from plugins.handlers.file_handler import FileHandlerOptions, make_file_handler
from plugins.handlers.log_handler import LogHandlerOptions, make_log_handler


def alert(i: int, state: str = "raised") -> Alert:
    return Alert("dev-1", "anomaly", state, "critical", 1000.0 + i, f"score high {i}", f"key{i}",  # type: ignore[arg-type]
                 score=2.5, details={"channel": "temp"})


def ctx(tmp_path: Path) -> PluginContext:
    return PluginContext(metrics=Metrics(), gateway_id="gw-test", state_dir=str(tmp_path))


def test_registered_through_the_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_GATEWAY_PLUGINS", "log_handler,file_handler")
    reg = Registry(make_plugin_manager(load_entry_points=False))
    assert {"log", "file"} <= set(reg.handlers)
    assert reg.handlers["file"][1] is FileHandlerOptions
    with pytest.raises(ValidationError):
        FileHandlerOptions(path="x", colour="red")  # type: ignore[call-arg]
    for model in (FileHandlerOptions, LogHandlerOptions):
        assert all(f.description for f in model.model_fields.values())


def test_log_handler_one_line_per_alert(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = make_log_handler("log", LogHandlerOptions(), ctx(tmp_path))
    assert isinstance(h, AlertHandler)
    caplog.set_level(logging.INFO, logger="lora_gateway.alerts")
    h.start()
    h.deliver(alert(1))
    cleared = alert(2, "cleared")
    cleared.replay = True
    h.deliver(cleared)
    h.stop()
    recs = [r for r in caplog.records if r.name == "lora_gateway.alerts"]
    assert [r.levelno for r in recs] == [logging.WARNING, logging.INFO]
    first = recs[0].getMessage()
    assert "raised anomaly device=dev-1 severity=critical score=2.5 key=key1" in first
    assert "replay" in recs[1].getMessage() and "\n" not in first


def test_file_handler_json_lines(tmp_path: Path) -> None:
    h = make_file_handler("file", FileHandlerOptions(path=Path("alerts/out.jsonl")), ctx(tmp_path))
    h.start()
    h.deliver(alert(1))
    h.deliver(alert(2, "cleared"))
    h.stop()
    h.stop()  # idempotent
    lines = (tmp_path / "alerts" / "out.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["key"] for r in rows] == ["key1", "key2"]
    assert rows[0]["gateway_id"] == "gw-test" and rows[0]["details"] == {"channel": "temp"}
    assert Alert.from_dict({k: v for k, v in rows[1].items() if k != "gateway_id"}) == alert(2, "cleared")


def test_file_handler_rotation(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    h = make_file_handler("file", FileHandlerOptions(path=path, max_bytes=4096), ctx(tmp_path))
    h.start()
    for i in range(40):
        h.deliver(alert(i))
    h.stop()
    assert path.stat().st_size <= 4096
    old = Path(f"{path}.1")
    keys = [json.loads(x)["key"] for x in old.read_text().splitlines() + path.read_text().splitlines()]
    assert keys[-1] == "key39" and keys == sorted(keys, key=lambda k: int(k[3:]))


def test_file_handler_write_error_is_a_delivery_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    h = make_file_handler("file", FileHandlerOptions(path=blocker / "a.jsonl"), ctx(tmp_path))
    h.start()  # logs, does not raise: the gateway keeps running, the outbox keeps the alerts
    with pytest.raises(DeliveryError, match="cannot write"):
        h.deliver(alert(1))
    h.stop()


def test_file_handler_end_to_end_after_failure(tmp_path: Path) -> None:
    """Outbox + dispatcher + file handler: a write failure is retried once the path is fixed."""
    blocker = tmp_path / "out"
    blocker.write_text("x")  # 'out' is a file, so out/alerts.jsonl cannot be written yet
    m = Metrics()
    h = make_file_handler("file", FileHandlerOptions(path=blocker / "alerts.jsonl"), ctx(tmp_path))
    with Outbox(tmp_path / "o.db", ["file"], 1 << 20, m, base_backoff_s=0.05) as ob:
        d = Dispatcher(ob, [h], m, idle_poll_s=0.05)
        d.start()
        try:
            ob.append(alert(1))
            deadline = time.monotonic() + 5
            while m.get("delivery_failures_total", handler="file") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            blocker.unlink()
            while ob.pending("file"):
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            d.stop(1)
            h.stop()
    (row,) = [json.loads(x) for x in (blocker / "alerts.jsonl").read_text().splitlines()]
    assert row["key"] == "key1" and row["replay"] is True

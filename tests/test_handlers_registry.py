"""Every built-in alert handler registers through the plugin manager with a documented,
strict options model, and its factory builds an AlertHandler."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from gateway.contracts import AlertHandler, PluginContext
from gateway.metrics import Metrics
from gateway.plugin_manager import Registry, make_plugin_manager

MODULES = "log_handler,file_handler,mqtt_handler,webhook_handler,homeassistant_handler"
MINIMAL = {"log": {}, "file": {"path": "alerts.jsonl"}, "mqtt": {}, "webhook": {"url": "http://127.0.0.1:9/x"},
           "homeassistant": {}}


def _fields_described(model: type[BaseModel]) -> list[str]:
    missing = []
    for name, f in model.model_fields.items():
        if not f.description:
            missing.append(f"{model.__name__}.{name}")
        sub = f.annotation
        for arg in getattr(sub, "__args__", (sub,)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                missing += _fields_described(arg)
    return missing


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("LORA_GATEWAY_PLUGINS", MODULES)
    return Registry(make_plugin_manager(load_entry_points=False))


def test_all_handlers_registered(registry: Registry) -> None:
    assert set(MINIMAL) <= set(registry.handlers)


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_options_strict_described_and_factory_builds_a_handler(registry: Registry, kind: str,
                                                                tmp_path: Path) -> None:
    factory, model = registry.handlers[kind]
    assert _fields_described(model) == []
    with pytest.raises(ValidationError):
        model(**MINIMAL[kind], no_such_option=1)
    handler = factory(kind, model(**MINIMAL[kind]), PluginContext(metrics=Metrics(), state_dir=str(tmp_path)))
    assert isinstance(handler, AlertHandler) and handler.name == kind
    handler.stop()  # stopping a handler never started is fine

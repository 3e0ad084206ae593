"""Generates the config reference (docs/config-reference.md) from the schema's field descriptions.

The core sections come from gateway.config.GatewayConfig; each source and handler type
from the options model its plugin registered. ``python -m gateway.config_reference``
rewrites the file; tests/test_config.py fails when it is stale, so docs cannot drift.
"""

from __future__ import annotations

import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from gateway.config import GatewayConfig, PluginTable
from gateway.plugin_manager import Registry, make_plugin_manager

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")
    for prefix in ("<class '", "'>"):
        text = text.replace(prefix, "")
    for mod in ("gateway.alerts.policy_config.", "gateway.ingest.profiles.", "gateway.config.", "gateway.broker.options.", "plugins.sources.mqtt.source."):
        text = text.replace(mod, "")
    text = re.sub(r"Union\[(\w+), Literal\['(\w+)'\]\]", r'\1 or "\2"', text)  # e.g. int or "auto"
    return text.replace(" | ", " or ")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(table)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "(see below)"
    if isinstance(value, Path):
        value = str(value)
    return f"`{value!r}`" if value not in (None, "") else "unset"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for inner in typing.get_args(arg):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _table(model: type[BaseModel], prefix: str, out: list[str], skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    rows = []
    nested = []
    for name, field in model.model_fields.items():
        if name in skip or field.exclude:
            continue
        sub = _nested_model(field.annotation)
        if sub is not None and sub is not PluginTable:
            nested.append((f"{prefix}.{name}" if prefix else name, sub, field))
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {(field.description or '').replace('|', '/')} |")
    out.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
    out.extend(rows)
    out.append("")
    for path, sub, field in nested:
        out.append(f"### `{path}`\n")
        if field.description:
            out.append(field.description + "\n")
        _table(sub, path, out)


def render(registry: Registry) -> str:
    out = ["# Configuration reference", "",
           "Generated from the schema by `python -m gateway.config_reference`; do not edit by hand.",
           "Unknown keys are refused. `deploy/gateway.example.toml` shows every key in use.", ""]
    for name, field in GatewayConfig.model_fields.items():
        if field.exclude or name in ("sources", "handlers"):
            continue
        sub = _nested_model(field.annotation)
        if sub is None:
            continue
        header = f"[[{name}]]" if "list" in str(field.annotation) else f"[{name}]"
        out.append(f"## `{header}`\n")
        if field.description:
            out.append(field.description + "\n")
        _table(sub, name, out)
    for section, kinds in (("sources", registry.sources), ("handlers", registry.handlers)):
        out.append(f"## `[[{section}]]`\n")
        out.append(f"Each entry has `type` (one of: {', '.join(f'`{k}`' for k in sorted(kinds))}) and an optional `name`; the other keys are the type's options:\n")
        for kind in sorted(kinds):
            out.append(f"### {section[:-1]} type `{kind}`\n")
            _table(kinds[kind][1], f"{section}.{kind}", out)
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    registry = Registry(make_plugin_manager(load_entry_points=False))
    REFERENCE.write_text(render(registry), encoding="utf-8")
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Names in the model store: ``NAME@VERSION`` references, model kinds, installed entries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.store_checks import StoreError

KINDS = ("base", "merged", "adapter")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class NoActiveModel(StoreError):
    """Nothing has been activated in this store yet."""


@dataclass(frozen=True)
class InstalledModel:
    """One installed model or adapter."""

    name: str
    version: str
    kind: str
    path: Path
    base_sha256: str | None  # for a base: its own weights hash; else the base it belongs to
    active: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"name@version"`` -> (name, version); ``"name"`` -> (name, None)."""
    name, _, version = ref.partition("@")
    if not NAME_RE.match(name) or (version and not NAME_RE.match(version)):
        raise StoreError(f"{ref!r}: expected NAME@VERSION (letters, digits, . _ + -)")
    return name, version or None


def model_kind(manifest: dict[str, Any]) -> str:
    """The manifest's kind: explicit ``kind``, else ``adapter`` when it names a base, else ``base``."""
    kind = manifest.get("kind")
    if kind is None:
        kind = "adapter" if (manifest.get("base_model") or manifest.get("base_sha256")) else "base"
    if kind not in KINDS:
        raise StoreError(f"manifest kind {kind!r} is not one of {', '.join(KINDS)}")
    return str(kind)

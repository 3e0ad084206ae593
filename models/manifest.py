"""Model manifest (``manifest.json``): dataclass, loader, writer and sha256 helpers.

Standard library only (safe for the daemon). The manifest describes one model directory:
what files it holds (with sha256), the ONNX contract (input/output names and shapes), how
inputs are normalised, default thresholds, LoRA targets, and how the model was trained,
evaluated and exported. Keys this module does not know are kept in ``extra`` and written
back unchanged, so other tools can extend the manifest without breaking this loader.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match the files beside it."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


@dataclass
class TensorSpec:
    """One ONNX input or output: ``shape`` entries are ints (fixed) or names (dynamic)."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"


@dataclass
class Manifest:
    """The contents of ``manifest.json``.

    ``files`` maps a file name (relative to the manifest's directory) to its sha256.
    ``window_length`` is T, fixed in the ONNX graph. ``channel_independent``: each channel
    is processed alone, so C is free. ``thresholds`` holds default scoring settings (see
    models.scoring.scorer). ``lora_targets`` names the nn.Linear modules a LoRA adapter may
    target. ``base_model`` is None for a base model, else ``name@version`` of its base.
    """

    name: str
    version: str
    files: dict[str, str]
    window_length: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    channel_independent: bool = True
    embedding_dim: int | None = None
    normalisation: str = "per-device calibration"
    sampling_interval_s: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    lora_targets: list[str] = field(default_factory=list)
    base_model: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self, name: str) -> TensorSpec:
        """The output called ``name``; ManifestError when absent."""
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise ManifestError(f"model {self.name} has no output {name!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        try:
            kwargs = {k: v for k, v in data.items() if k in known}
            kwargs["inputs"] = [TensorSpec(**s) for s in data["inputs"]]
            kwargs["outputs"] = [TensorSpec(**s) for s in data["outputs"]]
            kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
            manifest = cls(**kwargs)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: {exc}") from exc
        if not isinstance(manifest.window_length, int) or manifest.window_length < 1:
            raise ManifestError("window_length must be a positive integer")
        return manifest


def load_manifest(path: str | Path) -> Manifest:
    """Load a manifest from a file or a model directory (``<dir>/manifest.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest at {path}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: manifest must be a JSON object")
    return Manifest.from_dict(data)


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    """Write ``manifest.json`` into ``directory`` (sorted keys, trailing newline)."""
    path = Path(directory) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def hash_files(directory: str | Path, names: list[str]) -> dict[str, str]:
    """``{name: sha256}`` for the named files of ``directory``."""
    return {name: sha256_file(Path(directory) / name) for name in names}


def verify_files(manifest: Manifest, directory: str | Path) -> list[str]:
    """Problems found checking each listed file's sha256 (empty list = all good)."""
    problems: list[str] = []
    for name, expected in sorted(manifest.files.items()):
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif (actual := sha256_file(path)) != expected:
            problems.append(f"{name}: sha256 {actual} != manifest {expected}")
    return problems


def base_model_dir() -> Path:
    """Directory of the shipped base model (``models/base``)."""
    return Path(__file__).resolve().parent / "base"

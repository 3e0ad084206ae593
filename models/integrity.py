"""File integrity checks shared by the model store and the runtime (no torch).

A model or adapter directory holds ``manifest.json`` which lists the sha256 of every
other file. :func:`manifest_hashes` reads that list in either of the two layouts the
project writes (``{"files": {"path": "hex"}}`` or ``{"files": [{"path": ..,
"sha256": ..}]}``); :func:`verify_dir` checks every listed file and refuses files the
manifest does not list, pickle-based weights, and paths that leave the directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "manifest.json"

# Weight formats that are Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})

# Files a directory may hold without a manifest entry (none are loaded as weights).
UNLISTED_OK = frozenset({MANIFEST, "README.md", "MODEL_CARD.md"})


class IntegrityError(Exception):
    """A model directory failed a check; the message is one line for the user."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def pickle_refusal(name: str) -> str:
    """The user-facing reason a pickle-based weights file is refused, with what to do."""
    return (f"refusing {name}: {PurePosixPath(name).suffix} weights are Python pickles, and loading one can "
            "run arbitrary code; convert it to safetensors (e.g. safetensors.torch.save_file("
            "torch.load(path, weights_only=True), 'model.safetensors')), list it in manifest.json, and install that")


def check_relative(name: str) -> PurePosixPath:
    """Validate a path taken from a manifest or an archive: relative, no ``..``, no drive.

    Raises IntegrityError naming the path.
    """
    p = PurePosixPath(name.replace("\\", "/"))
    if not name or p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise IntegrityError(f"refusing absolute path {name!r}")
    if any(part == ".." for part in p.parts):
        raise IntegrityError(f"refusing path {name!r}: it leaves the model directory (..)")
    return p


def load_manifest(model_dir: Path) -> dict[str, Any]:
    """Read ``model_dir/manifest.json``; IntegrityError if missing or not a JSON object."""
    path = model_dir / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{model_dir}: no {MANIFEST}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise IntegrityError(f"{path}: expected a JSON object")
    return data


def manifest_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """``{relative path: sha256 hex}`` from a manifest's ``files`` entry.

    Accepts a mapping path -> hex, a mapping path -> {"sha256": hex, ...}, or a list of
    {"path": .., "sha256": ..}. Raises IntegrityError when absent or malformed.
    """
    files = manifest.get("files")
    out: dict[str, str] = {}
    if isinstance(files, dict):
        for name, value in files.items():
            digest = value.get("sha256") if isinstance(value, dict) else value
            out[str(name)] = str(digest)
    elif isinstance(files, list):
        for entry in files:
            if not isinstance(entry, dict) or "path" not in entry or "sha256" not in entry:
                raise IntegrityError("manifest 'files' entries need 'path' and 'sha256'")
            out[str(entry["path"])] = str(entry["sha256"])
    else:
        raise IntegrityError("manifest has no 'files' list with sha256 of every file")
    for name, digest in out.items():
        check_relative(name)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise IntegrityError(f"manifest: {name}: sha256 {digest!r} is not 64 hex digits")
    return out


def refuse_pickles(model_dir: Path) -> None:
    """Raise IntegrityError if any file under model_dir has a pickle-weights suffix."""
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
            raise IntegrityError(pickle_refusal(path.relative_to(model_dir).as_posix()))


def verify_dir(model_dir: Path, manifest: dict[str, Any] | None = None, strict: bool = True) -> dict[str, str]:
    """Check every file of a model directory against its manifest.

    Refuses pickle-based weights, symlinks, missing files and any sha256 mismatch; with
    ``strict`` (the store's install and verify) also files the manifest does not list
    (other than manifest.json and a README). The runtime loads only listed files and
    checks with ``strict=False``. Returns the verified ``{path: sha256}``. Raises
    IntegrityError with the first problem found.
    """
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir) if manifest is None else manifest
    refuse_pickles(model_dir)
    hashes = manifest_hashes(manifest)
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_symlink():
            raise IntegrityError(f"refusing symlink {rel} in a model directory")
        if strict and path.is_file() and rel not in hashes and rel not in UNLISTED_OK:
            raise IntegrityError(f"{rel}: file not listed in manifest.json (unknown files are not installed)")
    for name, digest in hashes.items():
        path = model_dir / name
        if not path.is_file():
            raise IntegrityError(f"{name}: listed in manifest.json but missing")
        actual = sha256_file(path)
        if actual != digest.lower():
            raise IntegrityError(f"{name}: sha256 mismatch (manifest {digest[:12]}..., file {actual[:12]}...): "
                                 "the file is corrupt or was changed after the manifest was written")
    return hashes


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill ``manifest['files']`` with the sha256 of every file in model_dir and write it.

    Returns the manifest written. Used by export and finetune so every shipped file is listed.
    """
    files = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_file() and rel not in UNLISTED_OK:
            files[rel] = sha256_file(path)
    out = dict(manifest)
    out["files"] = files
    (model_dir / MANIFEST).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out

"""The model store: install, list, activate, roll back, verify and remove models (no torch).

Layout under the store root (default ``<state_dir>/models``)::

    installed/<name>/<version>/   one verified model or adapter directory (manifest.json + files)
    active -> installed/<name>/<version>   a relative symlink, swapped atomically (os.replace)
    history.json                  activations, oldest first: [{"name", "version", "at"}]
    .lock                         flock taken by every change, so two commands cannot interleave
    staging/                      installs in progress (same filesystem, so the final move is a rename)

Kinds (manifest ``kind``): ``base`` (weights + ONNX graph, optionally a LoRA-input graph),
``merged`` (an adapter merged into its base: a complete, standalone ONNX model), both activatable;
and ``adapter`` (PEFT files and/or an ``.onnx_adapter``), served on its base through the
daemon's device-group mapping, never activated alone. An adapter or merged model names
its base by the sha256 of the base's weights (``base_sha256``).

Install refuses, each with a one-line :class:`StoreError`: pickle-based weights; archives
with absolute paths, ``..``, links or devices; a file whose sha256 differs from the
manifest or that the manifest does not list; an ONNX graph whose inputs/outputs differ
from the manifest or that fails a warm-up batch; an adapter whose base is not installed
or whose tensor names/shapes do not fit that base.

The daemon picks up an activation on SIGHUP: :func:`notify_daemon`.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models import integrity
from models.runtime import ModelLoadError, ModelRuntime, adapter_base_sha256, lora_graph_file, weights_sha256
from models.store_checks import (
    StoreError,
    check_adapter_tensors,
    check_lora_graph,
    copy_tree,
    extract_archive,
    fsync_dir,
)
from models.store_refs import NAME_RE, InstalledModel, NoActiveModel, model_kind, parse_ref

__all__ = ["InstalledModel", "ModelStore", "NoActiveModel", "StoreError", "notify_daemon", "parse_ref", "model_kind"]

ACTIVATABLE = ("base", "merged")
PID_FILE = "lora-gateway.pid"
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".zip")


class ModelStore:
    """A model store rooted at ``root`` (created on first change)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> ModelStore:
        """The default store of a gateway: ``<state_dir>/models``."""
        return cls(Path(state_dir) / "models")

    # ---- paths and locking ---------------------------------------------------------------
    @property
    def installed_dir(self) -> Path:
        return self.root / "installed"

    def _path(self, name: str, version: str) -> Path:
        return self.installed_dir / name / version

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- queries -------------------------------------------------------------------------
    def list(self) -> list[InstalledModel]:
        """Every installed model and adapter, sorted by name then version."""
        if not self.installed_dir.is_dir():
            return []
        active = self._active_ref()
        out = []
        for name_dir in sorted(self.installed_dir.iterdir()):
            for ver_dir in sorted(name_dir.iterdir()) if name_dir.is_dir() else []:
                out.append(self._describe(ver_dir, active))
        return out

    def get(self, ref: str) -> InstalledModel:
        """An installed model by ``name@version`` (or ``name`` if one version only)."""
        name, version = parse_ref(ref)
        if version is None:
            versions = [m for m in self.list() if m.name == name]
            if len(versions) != 1:
                raise StoreError(f"{name}: {'not installed' if not versions else 'several versions installed'}; "
                                 f"say NAME@VERSION (installed: {', '.join(m.ref for m in versions) or 'none'})")
            return versions[0]
        path = self._path(name, version)
        if not path.is_dir():
            raise StoreError(f"{name}@{version} is not installed (see `lora-gateway model list`)")
        return self._describe(path, self._active_ref())

    def _describe(self, path: Path, active: tuple[str, str] | None) -> InstalledModel:
        try:
            manifest = integrity.load_manifest(path)
            kind = model_kind(manifest)
        except (integrity.IntegrityError, StoreError):
            kind, manifest = "unreadable", {}
        base = weights_sha256(manifest) if kind == "base" else adapter_base_sha256(manifest)
        name, version = path.parent.name, path.name
        return InstalledModel(name, version, kind, path, base, active == (name, version))

    def active(self) -> Path:
        """The directory of the active model (the resolved ``active`` symlink). NoActiveModel if none."""
        link = self.root / "active"
        if not link.is_symlink():
            raise NoActiveModel(f"no model is active in {self.root}; run `lora-gateway model activate NAME@VERSION`")
        target = link.resolve()
        if not target.is_dir():
            raise StoreError(f"the active model {os.readlink(link)} is missing from {self.root}")
        return target

    def active_model(self) -> InstalledModel:
        """The active model's description (NoActiveModel if none)."""
        path = self.active()
        return self._describe(path, (path.parent.name, path.name))

    def _active_ref(self) -> tuple[str, str] | None:
        link = self.root / "active"
        if not link.is_symlink():
            return None
        parts = Path(os.readlink(link)).parts
        return (parts[-2], parts[-1]) if len(parts) >= 2 else None

    def history(self) -> builtins.list[dict[str, Any]]:
        """Activations, oldest first."""
        path = self.root / "history.json"
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path}: corrupt history ({exc})") from exc
        return list(data) if isinstance(data, list) else []

    def adapter_path(self, ref: str) -> Path:
        """Directory of an installed adapter (for the daemon's device-group mapping)."""
        model = self.get(ref)
        if model.kind != "adapter":
            raise StoreError(f"{model.ref} is a {model.kind}, not an adapter")
        return model.path

    def base_for(self, base_sha256: str) -> InstalledModel | None:
        """The installed base whose weights hash is ``base_sha256`` (newest version), if any."""
        found = [m for m in self.list() if m.kind == "base" and m.base_sha256 == base_sha256]
        return found[-1] if found else None

    # ---- install -------------------------------------------------------------------------
    def install(self, source: Path) -> InstalledModel:
        """Verify and install a model directory or archive (.tar[.gz|.xz|.bz2], .tgz, .zip).

        Re-installing identical content is a no-op; the same name@version with other
        content is refused. Raises StoreError with the reason for any refusal.
        """
        source = Path(source)
        if not source.exists():
            raise StoreError(f"{source}: no such file or directory")
        self.root.mkdir(parents=True, exist_ok=True)
        staging_root = self.root / "staging"
        staging_root.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="install-", dir=staging_root))
        try:
            if source.is_dir():
                model_dir = copy_tree(source, staging / "model")
            elif source.name.endswith(_ARCHIVE_SUFFIXES):
                model_dir = extract_archive(source, staging / "model")
            else:
                if source.suffix.lower() in integrity.PICKLE_SUFFIXES:
                    raise StoreError(integrity.pickle_refusal(source.name))
                raise StoreError(f"{source}: not a model directory or a .tar/.tar.gz/.zip archive")
            manifest = self._check(model_dir)
            name, version = str(manifest.get("name", "")), str(manifest.get("version", ""))
            if not NAME_RE.match(name) or not NAME_RE.match(version):
                raise StoreError(f"manifest name/version {name!r}@{version!r} are not safe names")
            with self._locked():
                dest = self._path(name, version)
                if dest.exists():
                    old = integrity.manifest_hashes(integrity.load_manifest(dest))
                    same = old == integrity.manifest_hashes(manifest)
                    if not same:
                        raise StoreError(f"{name}@{version} is already installed with different files; "
                                         "give the new one another version, or remove the old one first")
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(model_dir, dest)
                    fsync_dir(dest.parent)
            return self.get(f"{name}@{version}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _check(self, model_dir: Path) -> dict[str, Any]:
        """Every install/verify check on a model directory; returns its manifest."""
        try:
            integrity.refuse_pickles(model_dir)
            manifest = integrity.load_manifest(model_dir)
            integrity.verify_dir(model_dir, manifest)
        except integrity.IntegrityError as exc:
            raise StoreError(str(exc)) from exc
        kind = model_kind(manifest)
        if kind in ACTIVATABLE:
            try:
                runtime = ModelRuntime.load(model_dir, ["CPUExecutionProvider"])
                try:
                    if kind == "base" and lora_graph_file(manifest):
                        check_lora_graph(model_dir, runtime)
                finally:
                    runtime.close()
            except ModelLoadError as exc:
                raise StoreError(str(exc)) from exc
        else:
            base = self._require_base(manifest)
            check_adapter_tensors(model_dir, manifest, base.path)
            # An .onnx_adapter is run against the base's LoRA-input graph when the base has one;
            # without it, the PEFT tensors were checked above and the runtime checks the file at load.
            if any(model_dir.glob("*.onnx_adapter")) and lora_graph_file(integrity.load_manifest(base.path)):
                try:
                    ModelRuntime.load(base.path, ["CPUExecutionProvider"], adapters={"check": model_dir}).close()
                except ModelLoadError as exc:
                    raise StoreError(f"adapter does not fit base {base.ref}: {exc}") from exc
        return manifest

    def _require_base(self, manifest: dict[str, Any]) -> InstalledModel:
        want = adapter_base_sha256(manifest)
        if not want:
            raise StoreError("adapter manifest does not name its base (base_sha256)")
        base = self.base_for(want)
        if base is None:
            raise StoreError(f"this adapter belongs to base {manifest.get('base_model') or '?'} "
                             f"(weights sha256 {want[:12]}...), which is not installed here; install that base first")
        return base

    # ---- verify --------------------------------------------------------------------------
    def verify(self, ref: str | None = None) -> builtins.list[tuple[str, str | None]]:
        """Re-check installed files: ``[(name@version, None if good else the problem)]``.

        ``ref`` None checks everything installed.
        """
        models = [self.get(ref)] if ref else self.list()
        results: builtins.list[tuple[str, str | None]] = []
        for model in models:
            try:
                self._check(model.path)
                results.append((model.ref, None))
            except StoreError as exc:
                results.append((model.ref, str(exc)))
        return results

    # ---- activate / rollback -------------------------------------------------------------
    def activate(self, name: str, version: str) -> InstalledModel:
        """Verify an installed base or merged model and make it active (atomic symlink swap)."""
        with self._locked():
            model = self._activate_locked(name, version)
            history = self.history()
            history.append({"name": name, "version": version, "at": time.time()})
            self._write_history(history)
        return model

    def _activate_locked(self, name: str, version: str) -> InstalledModel:
        model = self.get(f"{name}@{version}")
        if model.kind not in ACTIVATABLE:
            raise StoreError(f"{model.ref} is an {model.kind}: adapters are served on their base, mapped to device "
                             "groups in the config; or export it merged (`lora-gateway model export --merged`) "
                             "and activate that")
        self._check(model.path)
        tmp = self.root / f".active.tmp-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(os.path.relpath(model.path, self.root), tmp)
        os.replace(tmp, self.root / "active")
        fsync_dir(self.root)
        return self.get(model.ref)

    def rollback(self) -> InstalledModel:
        """Re-activate the model that was active before the current one."""
        with self._locked():
            history = self.history()
            current = self._active_ref()
            while history and (history[-1]["name"], history[-1]["version"]) == current:
                history.pop()
            if not history:
                raise StoreError("nothing to roll back to: no earlier activation in the history")
            prev = history[-1]
            if not self._path(prev["name"], prev["version"]).is_dir():
                raise StoreError(f"the previous model {prev['name']}@{prev['version']} has been removed; "
                                 "activate another one by name")
            model = self._activate_locked(prev["name"], prev["version"])
            self._write_history(history)
        return model

    def _write_history(self, history: builtins.list[dict[str, Any]]) -> None:
        path = self.root / "history.json"
        tmp = path.with_name(f".history.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(history[-100:], indent=1) + "\n")
        os.replace(tmp, path)

    # ---- remove --------------------------------------------------------------------------
    def remove(self, ref: str) -> InstalledModel:
        """Remove an installed model; refused for the active one and for a base that adapters use."""
        with self._locked():
            model = self.get(ref)
            if model.active:
                raise StoreError(f"{model.ref} is active; activate another model (or roll back) before removing it")
            if model.kind == "base":
                users = [m.ref for m in self.list() if m.kind != "base" and m.base_sha256 == model.base_sha256]
                others = [m for m in self.list() if m.kind == "base" and m.base_sha256 == model.base_sha256
                          and m.ref != model.ref]
                if users and not others:
                    raise StoreError(f"{model.ref} is the base of {', '.join(users)}; remove those first")
            trash = self.root / "staging" / f"remove-{model.name}-{model.version}-{os.getpid()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(model.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            name_dir = model.path.parent
            if name_dir.is_dir() and not any(name_dir.iterdir()):
                name_dir.rmdir()
        return model


def notify_daemon(state_dir: Path) -> str:
    """Tell a running daemon to reload the active model: SIGHUP to the pid in ``<state_dir>/lora-gateway.pid``.

    Returns a one-line description of what happened (no pid file, stale pid, signalled).
    Never raises for a missing or stale daemon: activation itself has already succeeded.
    On Linux the pid's command line must mention ``lora-gateway`` or ``gateway`` so a
    recycled pid of another program is never signalled.
    """
    pid_file = Path(state_dir) / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        return f"no running daemon found ({pid_file} does not exist); it will load the active model when it starts"
    except ValueError:
        return f"{pid_file} does not hold a pid; daemon not notified"
    cmdline = Path(f"/proc/{pid}/cmdline")
    if Path("/proc").is_dir():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return f"daemon pid {pid} from {pid_file} is not running; it will load the active model when it starts"
        if "gateway" not in text:
            return f"pid {pid} from {pid_file} is not a lora-gateway process (stale pid file); not signalled"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return f"daemon pid {pid} from {pid_file} is not running; it will load the active model when it starts"
    except PermissionError:
        return f"not allowed to signal daemon pid {pid}; run `systemctl reload lora-gateway` or send SIGHUP as its user"
    return f"told the daemon (pid {pid}) to reload: SIGHUP sent"

"""``lora-gateway model`` sub-commands for the model store and LoRA adapters.

Store: ``install``, ``list``, ``activate``, ``rollback``, ``verify``, ``remove`` (no torch).
Adapters: ``finetune``, ``export`` (need the ``[train]`` extra; imported inside handlers).

The store lives in ``<state_dir>/models``; ``state_dir`` comes from ``--state-dir``, else
``[gateway] state_dir`` of ``--config``, else ``$LORA_GATEWAY_STATE_DIR``, else
``/var/lib/lora-gateway``. ``activate`` and ``rollback`` tell a running daemon to reload
(SIGHUP to the pid in ``<state_dir>/lora-gateway.pid``) unless ``--no-notify``.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from models.cli.errors import UserError

DEFAULT_STATE_DIR = Path("/var/lib/lora-gateway")


def state_dir_from(args: argparse.Namespace) -> Path:
    """Resolve the gateway state directory from the command line, config, environment, default."""
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    config = getattr(args, "config", None)
    if config:
        try:
            data = tomllib.loads(Path(config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"{config}: cannot read config: {exc}") from exc
        value = data.get("gateway", {}).get("state_dir")
        if value:
            return Path(value)
    env = os.environ.get("LORA_GATEWAY_STATE_DIR")
    return Path(env) if env else DEFAULT_STATE_DIR


def _store(args: argparse.Namespace) -> Any:
    from models.store import ModelStore

    return ModelStore.for_state_dir(state_dir_from(args))


def _wrap(func: Any) -> Any:
    """Turn StoreError / ModelLoadError into one-line UserErrors."""
    def handler(args: argparse.Namespace) -> int:
        from models.runtime import ModelLoadError
        from models.store import StoreError

        try:
            return int(func(args) or 0)
        except (StoreError, ModelLoadError) as exc:
            raise UserError(str(exc)) from exc
    handler.__doc__ = func.__doc__
    return handler


def cmd_install(args: argparse.Namespace) -> int:
    """Install a model or adapter directory or archive."""
    store = _store(args)
    model = store.install(Path(args.path))
    print(f"installed {model.ref} ({model.kind}) in {model.path}")
    if args.activate:
        return cmd_activate(argparse.Namespace(**{**vars(args), "ref": model.ref}))
    return 0


def _bundled_row() -> dict[str, Any]:
    """The model shipped in the package (``models/base``): what the daemon serves when no
    store model is active."""
    from models import integrity
    from models.manifest import base_model_dir

    path = base_model_dir()
    try:
        manifest = integrity.load_manifest(path)
    except integrity.IntegrityError:
        manifest = {}
    return {"name": str(manifest.get("name", "?")), "version": str(manifest.get("version", "?")), "kind": "base",
            "active": False, "bundled": True, "base_sha256": None, "path": str(path)}


def cmd_list(args: argparse.Namespace) -> int:
    """List installed models and adapters, and the bundled model (which serves when none
    is active)."""
    models = _store(args).list()
    bundled = _bundled_row()
    bundled["active"] = not any(m.active for m in models)
    if args.json:
        rows = [{"name": m.name, "version": m.version, "kind": m.kind, "active": m.active, "bundled": False,
                 "base_sha256": m.base_sha256, "path": str(m.path)} for m in models]
        print(json.dumps(rows + [bundled], indent=2))
        return 0
    for m in models:
        base = f" base {m.base_sha256[:12]}" if m.base_sha256 else ""
        print(f"{'*' if m.active else ' '} {m.ref:<32} {m.kind:<8}{base}")
    ref = f"{bundled['name']}@{bundled['version']}"
    note = "serving: no store model is active" if bundled["active"] else "serves when no store model is active"
    print(f"{'*' if bundled['active'] else ' '} {ref:<32} {'base':<8} bundled ({note})")
    return 0


def _loads(model_dir: Path) -> None:
    """Load and warm up ``model_dir`` on the CPU (then close it): the store's active pointer
    moves only to a model that loads, so the daemon's SIGHUP reload does not find a model it
    cannot serve (the MQTT command topic loads in the daemon itself before it commits)."""
    from models.runtime import ModelLoadError, ModelRuntime

    try:
        ModelRuntime.load(Path(model_dir), ["CPUExecutionProvider"]).close()
    except ModelLoadError as exc:
        raise UserError(f"not activated: the model does not load: {exc}") from exc


def cmd_activate(args: argparse.Namespace) -> int:
    """Load (warm-up included) an installed base or merged model, activate it and tell the daemon."""
    from models.store import notify_daemon, parse_ref

    name, version = parse_ref(args.ref)
    store = _store(args)
    if version is None:
        version = store.get(name).version
    _loads(store.get(f"{name}@{version}").path)
    model = store.activate(name, version)
    print(f"active: {model.ref}")
    if not args.no_notify:
        print(notify_daemon(state_dir_from(args)))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Re-activate the previous model."""
    from models.store import notify_daemon

    model = _store(args).rollback()
    print(f"rolled back; active: {model.ref}")
    if not args.no_notify:
        print(notify_daemon(state_dir_from(args)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-check installed files; exit 1 if any fails."""
    results = _store(args).verify(args.ref)
    if not results:
        print("no models installed")
    bad = 0
    for ref, problem in results:
        print(f"{ref}: {'OK' if problem is None else 'FAILED: ' + problem}")
        bad += problem is not None
    if bad:
        raise UserError(f"{bad} of {len(results)} installed model(s) failed verification")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Remove an installed model or adapter."""
    model = _store(args).remove(args.ref)
    print(f"removed {model.ref}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, help="gateway state directory (store: <state-dir>/models)")
    p.add_argument("--config", "-c", type=Path, help="read state_dir from this gateway config")


def add_model_commands(model_sub: Any) -> None:
    """Add the store and adapter sub-commands to ``lora-gateway model``."""
    p = model_sub.add_parser("install", help="verify and install a model/adapter directory or archive")
    p.add_argument("path", help="model directory, or .tar/.tar.gz/.tgz/.zip archive")
    p.add_argument("--activate", action="store_true", help="activate it after installing")
    p.add_argument("--no-notify", action="store_true", help="with --activate: do not signal the daemon")
    _common(p)
    p.set_defaults(func=_wrap(cmd_install))

    p = model_sub.add_parser("list", help="list installed models and adapters, and the bundled model (* = serving)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    _common(p)
    p.set_defaults(func=_wrap(cmd_list))

    p = model_sub.add_parser("activate", help="switch the served model (atomic) and tell the daemon")
    p.add_argument("ref", metavar="NAME@VERSION", help="the installed model to serve (see `model list`)")
    p.add_argument("--no-notify", action="store_true", help="do not signal a running daemon")
    _common(p)
    p.set_defaults(func=_wrap(cmd_activate))

    p = model_sub.add_parser("rollback", help="re-activate the previously active model")
    p.add_argument("--no-notify", action="store_true", help="do not signal a running daemon")
    _common(p)
    p.set_defaults(func=_wrap(cmd_rollback))

    p = model_sub.add_parser("verify", help="re-check sha256, graphs and adapters of installed models")
    p.add_argument("ref", nargs="?", metavar="NAME@VERSION", help="one model (default: all)")
    _common(p)
    p.set_defaults(func=_wrap(cmd_verify))

    p = model_sub.add_parser("remove", help="remove an installed model or adapter (not the active one)")
    p.add_argument("ref", metavar="NAME@VERSION", help="the installed model or adapter to remove")
    _common(p)
    p.set_defaults(func=_wrap(cmd_remove))

    try:
        from models.cli.adapters import add_adapter_commands
    except ModuleNotFoundError as exc:
        if exc.name != "models.cli.adapters":
            raise
    else:
        add_adapter_commands(model_sub)

"""``lora-gateway run``, ``config check``, ``plugins`` and ``doctor``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import pluggy

from models.cli.errors import UserError
from gateway.config import (
    ConfigError,
    GatewayConfig,
    plugin_allow_list,
    read_config_data,
    redacted,
    validate_config,
)
from gateway.plugin_manager import PluginError, Registry, make_plugin_manager

log = logging.getLogger(__name__)


def load_everything(config_path: Path | None) -> tuple[GatewayConfig, pluggy.PluginManager, Registry]:
    """The config's plugin allow-list, then the plugins it allows, then the whole config
    validated against them. Raises UserError (one line per problem)."""
    source = "defaults" if config_path is None else str(config_path)
    try:
        data = read_config_data(config_path)
        allow = plugin_allow_list(data, source)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    try:
        pm = make_plugin_manager(allow_entry_points=allow)
    except PluginError as exc:
        raise UserError(str(exc)) from exc
    registry = Registry(pm)
    try:
        config = validate_config(data, registry, source)
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    return config, pm, registry


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.service import Gateway, StartupError

    config, pm, registry = load_everything(args.config)
    logging.getLogger().setLevel(config.gateway.log_level if not args.verbose else "DEBUG")
    log.info("configuration: %s", config_summary(config))
    log.debug("configuration (full): %s", json.dumps(redacted(config)))
    gateway = Gateway(config, pm, registry)
    try:
        gateway.run(duration=args.duration)
    except StartupError as exc:
        raise UserError(str(exc)) from exc
    return 0


def config_summary(config: GatewayConfig) -> str:
    """One short line: what runs, where state goes, what is served (the full config is DEBUG)."""
    def names(tables: list[Any]) -> str:
        return ", ".join(t.type if not t.name or t.name == t.type else f"{t.type} {t.name}" for t in tables) or "none"
    status = "off" if not (config.status.enabled and config.metrics.listen) else (
        "with operator token" if (config.status.operator_token_env or config.status.operator_token_file) else "read-only")
    return (f"gateway {config.gateway.id}, state {config.gateway.state_dir}; sources: {names(config.sources)}; "
            f"handlers: {names(config.handlers)}; {len(config.profiles)} profile(s); "
            f"model {config.model.path or 'store active or bundled'}, {len(config.model.adapters)} adapter(s); "
            f"metrics {config.metrics.listen or 'off'}, status page {status}; record {'on' if config.record.enabled else 'off'}"
            f"; commands {'on' if config.commands.enabled else 'off'}")


def cmd_config_check(args: argparse.Namespace) -> int:
    config, _, _ = load_everything(args.file)
    print(f"{args.file}: OK ({len(config.sources)} source(s), {len(config.handlers)} handler(s), {len(config.profiles)} profile(s))")
    if args.show:
        print(json.dumps(redacted(config), indent=2, default=str))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    try:
        pm = make_plugin_manager()
    except PluginError as exc:
        raise UserError(str(exc)) from exc
    registry = Registry(pm)
    rows = []
    for name, plugin in sorted(pm.list_name_plugin()):
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = pm.get_plugin(name)
        rows.append({"name": name, "hooks": hooks, "builtin": name.startswith("plugins."), "module": getattr(dist, "__name__", str(dist))})
    out = {"plugins": rows, "sources": sorted(registry.sources), "handlers": sorted(registry.handlers), "codecs": registry.codecs}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<45} {'built-in' if r['builtin'] else 'third-party':<12} {', '.join(h.removeprefix('lora_gateway_') for h in r['hooks'])}")
        print(f"\nsources:  {', '.join(out['sources'])}\nhandlers: {', '.join(out['handlers'])}\ncodecs:   {', '.join(out['codecs'])}")
    return 0


def _secret_problems(config: GatewayConfig) -> list[str]:
    """Every ``*_env`` option whose variable is unset and every ``*_file`` option whose file
    cannot be read, in sources, handlers and [commands] (run would fail to connect)."""
    out: list[str] = []
    tables = [(f"sources.{n}", o) for _, n, o in config.source_options]
    tables += [(f"handlers.{n}", o) for _, n, o in config.handler_options]
    if config.commands.enabled:
        tables.append(("commands", config.commands))
    for where, opts in tables:
        for key, value in opts:
            if value in (None, "") or not isinstance(key, str):
                continue
            if key.endswith("_env") and not os.environ.get(str(value)):
                out.append(f"{where}.{key}: environment variable {value} is not set")
            elif key.endswith("_file") and not os.access(Path(value), os.R_OK):
                out.append(f"{where}.{key}: {value} cannot be read")
    return out


def _state_dir_check(state_dir: Path) -> tuple[bool, str]:
    """Whether run could use ``state_dir``, looked at without creating or writing anything."""
    if state_dir.exists():
        if not state_dir.is_dir():
            return False, f"{state_dir} is not a directory"
        ok = os.access(state_dir, os.W_OK | os.X_OK)
        return ok, f"{state_dir} {'writable' if ok else 'NOT writable'}"
    parent = state_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    ok = parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    return ok, (f"{state_dir} does not exist yet; run creates it ({parent} is "
                f"{'writable' if ok else 'NOT writable'})")


def cmd_doctor(args: argparse.Namespace) -> int:
    """The checks run makes before it serves, without starting anything or writing to disk:
    the config (with plugins), the model with its adapters (the same load run does), the
    operator token, secrets named by ``*_env``/``*_file`` options, the state directory."""
    import onnxruntime as ort

    from gateway.pipeline.batching import BatchTableError, resolve_batching
    from gateway.service import load_model, resolve_model_dir
    from gateway.status.config import operator_token
    from models.providers import GPU_PROVIDERS, choose_providers, gpu_name
    from models.runtime import ModelLoadError

    config, _, _ = load_everything(args.config)
    problems: list[str] = []
    print(f"config        {args.config or 'embedded defaults'}: OK")
    print(f"python        {platform.python_version()} on {platform.machine()} ({platform.system()})")
    print(f"onnxruntime   {ort.__version__}; providers in this build: {', '.join(ort.get_available_providers())}")
    _, notes = choose_providers(config.model.providers)
    print(f"preference    {', '.join(config.model.providers)}")
    for note in notes:
        print(f"  skipped     {note}")
    model_dir = resolve_model_dir(config)
    try:
        runtime = load_model(config, model_dir)
        adapters = ", ".join(sorted(runtime.adapter_names)) or "none configured"
        print(f"model         {model_dir} ({runtime.manifest.get('name', '?')} {runtime.manifest.get('version', '?')}), "
              f"window {runtime.window_length}, serving on {', '.join(runtime.providers_in_use)}; adapters: {adapters}")
        for note in runtime.provider_notes:
            print(f"  note        {note}")
        serving = runtime.providers_in_use[0]
        print(f"provider      {serving}" + (f", GPU {gpu_name()}" if serving in GPU_PROVIDERS else ""))
        try:
            b = resolve_batching(config.batcher.max_batch, config.batcher.max_delay_ms, serving)
            print(f"batcher       max_batch {b.max_batch}, deadline {b.max_delay_ms:g} ms ({b.source})")
        except BatchTableError as exc:
            problems.append("batcher")
            print(f"batcher       FAILED: {exc}")
        runtime.close()
    except ModelLoadError as exc:
        problems.append("model")
        print(f"model         FAILED: {exc}")
    try:
        token = operator_token(config.status)
        print(f"status page   {'off' if not (config.status.enabled and config.metrics.listen) else 'on'}, "
              f"{'operator token set' if token else 'read-only (no operator token)'}")
    except ValueError as exc:
        problems.append("status")
        print(f"status page   FAILED: {exc}")
    for problem in _secret_problems(config):
        problems.append("secret")
        print(f"secret        FAILED: {problem}")
    ok, text = _state_dir_check(config.gateway.state_dir)
    if not ok:
        problems.append("state dir")
    print(f"state dir     {text}")
    try:
        from serial.tools import list_ports

        ports = [p.device for p in list_ports.comports()]
        print(f"serial ports  {', '.join(ports) if ports else 'none found'}")
    except Exception as exc:  # noqa: BLE001 - informational only
        print(f"serial ports  could not list: {exc}")
    print("result        " + ("OK" if not problems else f"{len(problems)} problem(s): {', '.join(problems)}"))
    return 0 if not problems else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser("run", help="run the gateway daemon", description="Run the gateway with a TOML config (see deploy/gateway.example.toml).")
    p.add_argument("--config", "-c", type=Path, help="TOML config file (default: embedded defaults)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: run until SIGTERM)")
    p.set_defaults(func=cmd_run)

    c = sub.add_parser("config", help="configuration tools")
    csub = c.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    chk = csub.add_parser("check", help="validate a config file (no I/O); exit 1 listing every error")
    chk.add_argument("file", type=Path, help="the TOML file to check")
    chk.add_argument("--show", action="store_true", help="print the effective config, secrets redacted")
    chk.set_defaults(func=cmd_config_check)
    c.set_defaults(func=lambda a: (c.print_help(), 2)[1])

    pl = sub.add_parser("plugins", help="list loaded plugins, source/handler types and codecs")
    pl.add_argument("--json", action="store_true", help="print the list as JSON")
    pl.set_defaults(func=cmd_plugins)

    d = sub.add_parser("doctor", help="check this box and a config the way run would, changing nothing on disk",
                       description=cmd_doctor.__doc__)
    d.add_argument("--config", "-c", type=Path, help="TOML config file to check (default: embedded defaults)")
    d.set_defaults(func=cmd_doctor)



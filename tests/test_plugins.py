"""Plugins: built-ins and a throwaway third-party package load by the same path and get used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway import hookspecs
from gateway.ingest.decoding import decode_uplink
from gateway.ingest.profiles import ProfileConfig, ProfileSet
from gateway.plugin_manager import DEFAULT_PLUGINS, PluginError, Registry, make_plugin_manager
from gateway.types import RawUplink


def install_throwaway_plugin(root: Path, body: str, name: str = "throwaway") -> Path:
    """Write a package plus dist-info with a lora_gateway entry point (what pip install makes)."""
    (root / f"{name}_plugin.py").write_text(textwrap.dedent(body))
    dist = root / f"{name}_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[lora_gateway]\n{name} = {name}_plugin\n")
    return root


THROWAWAY = '''
from gateway.hookspecs import hookimpl

@hookimpl
def lora_gateway_codecs():
    return ["ascii_kv"]

@hookimpl
def lora_gateway_decode(uplink, codec):
    if codec != "ascii_kv":
        return None
    key, _, value = uplink.payload.decode().partition(":")
    return {key: float(value)}
'''


def test_third_party_entry_point_plugin_is_loaded_and_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = install_throwaway_plugin(tmp_path, THROWAWAY)
    monkeypatch.syspath_prepend(str(root))
    pm = make_plugin_manager()
    try:
        assert pm.get_plugin("throwaway") is not None
        assert "ascii_kv" in Registry(pm).codecs
        uplink = RawUplink(device_id="dev-1", received_at=1.7e9, payload=b"soil:31.5")
        reading, _ = decode_uplink(pm, uplink, ProfileSet([ProfileConfig(name="p", match_dev_eui=["dev-1"], codec="ascii_kv")]))
        assert reading.values == {"soil": 31.5}
        # the allow-list keeps it out
        assert make_plugin_manager(allow_entry_points=[]).get_plugin("throwaway") is None
    finally:
        sys.modules.pop("throwaway_plugin", None)


def test_plugins_command_lists_builtins_and_third_party(tmp_path: Path) -> None:
    root = install_throwaway_plugin(tmp_path, THROWAWAY)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "plugins", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    names = {p["name"] for p in listing["plugins"]}
    assert set(DEFAULT_PLUGINS) <= names and "throwaway" in names
    assert {"mqtt", "serial"} <= set(listing["sources"])
    assert {"log", "file", "mqtt", "webhook", "homeassistant"} <= set(listing["handlers"])
    assert "ascii_kv" in listing["codecs"] and "cayenne_lpp" in listing["codecs"]


def test_a_misspelt_hook_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = install_throwaway_plugin(tmp_path, '''
from gateway.hookspecs import hookimpl

@hookimpl
def lora_gateway_decod(uplink, codec):
    return None
''', name="misspelt")
    monkeypatch.syspath_prepend(str(root))
    try:
        with pytest.raises(PluginError, match="lora_gateway_decod"):
            make_plugin_manager()
    finally:
        sys.modules.pop("misspelt_plugin", None)


def test_a_broken_plugin_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = install_throwaway_plugin(tmp_path, "raise RuntimeError('boom')\n", name="broken")
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(PluginError, match='Error importing plugin "broken": boom'):
        make_plugin_manager()


def test_every_hook_has_a_builtin_implementation_or_a_test() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    implemented = {h for h in dir(hookspecs) if h.startswith("lora_gateway_") and pm.hook.__dict__.get(h) and pm.hook.__dict__[h].get_hookimpls()}
    tested_here = {"lora_gateway_decode", "lora_gateway_codecs"}
    missing = {h for h in dir(hookspecs) if h.startswith("lora_gateway_")} - implemented - tested_here
    assert not missing, f"hooks with neither a built-in implementation nor a test: {missing}"

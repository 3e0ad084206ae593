"""Model store: install, verify, activate, rollback, remove, and every install refusal."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model_fixtures import make_adapter, make_base
from models import integrity
from models.store import ModelStore, NoActiveModel, StoreError, notify_daemon


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore.for_state_dir(tmp_path / "state")


def _tar(path: Path, members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tf.addfile(info)
    return path


def _dir_members(directory: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _flip_byte(path: Path, index: int) -> None:
    """Corrupt one byte of ``path`` in place (the size stays the same)."""
    data = bytearray(path.read_bytes())
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


# ---- install ---------------------------------------------------------------------------------
def test_install_directory_and_list(store: ModelStore, tmp_path: Path) -> None:
    model = store.install(make_base(tmp_path / "src"))
    assert (model.name, model.version, model.kind, model.active) == ("tiny", "1", "base", False)
    assert model.base_sha256 == integrity.sha256_file(tmp_path / "src" / "model.safetensors")
    assert [m.ref for m in store.list()] == ["tiny@1"]
    assert (store.root / "installed" / "tiny" / "1" / "model.onnx").is_file()
    assert store.install(tmp_path / "src").ref == "tiny@1"  # identical re-install is a no-op
    assert not any((store.root / "staging").iterdir())


def test_install_archive(store: ModelStore, tmp_path: Path) -> None:
    src = make_base(tmp_path / "src")
    archive = _tar(tmp_path / "tiny.tar.gz", _dir_members(src, "tiny-1/"))
    assert store.install(archive).ref == "tiny@1"
    zpath = tmp_path / "tiny2.zip"
    src2 = make_base(tmp_path / "src2", version="2")
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in _dir_members(src2).items():
            zf.writestr(name, data)
    assert store.install(zpath).ref == "tiny@2"


def test_same_version_other_content_refused(store: ModelStore, tmp_path: Path) -> None:
    store.install(make_base(tmp_path / "a", seed=0))
    with pytest.raises(StoreError, match="already installed with different files"):
        store.install(make_base(tmp_path / "b", seed=1))


def test_corrupt_byte_refused(store: ModelStore, tmp_path: Path) -> None:
    src = make_base(tmp_path / "src")
    _flip_byte(src / "model.safetensors", -3)
    with pytest.raises(StoreError, match="model.safetensors: sha256 mismatch"):
        store.install(src)
    assert store.list() == []


def test_wrong_hash_in_manifest_refused(store: ModelStore, tmp_path: Path) -> None:
    src = make_base(tmp_path / "src")
    manifest = integrity.load_manifest(src)
    manifest["files"]["config.json"] = "0" * 64
    (src / "manifest.json").write_text(__import__("json").dumps(manifest))
    with pytest.raises(StoreError, match="config.json: sha256 mismatch"):
        store.install(src)


def test_unlisted_file_refused(store: ModelStore, tmp_path: Path) -> None:
    src = make_base(tmp_path / "src")
    (src / "extra.onnx").write_bytes(b"x")
    with pytest.raises(StoreError, match="extra.onnx: file not listed in manifest.json"):
        store.install(src)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickle_weights_refused(store: ModelStore, tmp_path: Path, suffix: str) -> None:
    src = make_base(tmp_path / "src")
    (src / f"weights{suffix}").write_bytes(b"\x80\x04K\x01.")
    integrity.write_manifest(src, integrity.load_manifest(src))  # even when listed with a correct hash
    with pytest.raises(StoreError, match=f"refusing weights{suffix}: .*pickles.*arbitrary code.*safetensors"):
        store.install(src)
    with pytest.raises(StoreError, match="pickles"):
        store.install(src / f"weights{suffix}")
    archive = _tar(tmp_path / "p.tar.gz", _dir_members(src))
    with pytest.raises(StoreError, match="pickles"):
        store.install(archive)
    assert store.list() == []


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/tmp/evil.txt", "tiny/../../evil.txt"])
def test_traversal_archive_refused(store: ModelStore, tmp_path: Path, bad_name: str) -> None:
    src = make_base(tmp_path / "src")
    members = _dir_members(src)
    members[bad_name] = b"owned"
    archive = _tar(tmp_path / "t.tar.gz", members)
    with pytest.raises(StoreError, match="refusing"):
        store.install(archive)
    zpath = tmp_path / "t.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(StoreError, match="refusing"):
        store.install(zpath)
    assert not (tmp_path / "evil.txt").exists() and not (store.root / "evil.txt").exists()
    assert store.list() == []


def test_symlink_in_archive_refused(store: ModelStore, tmp_path: Path) -> None:
    src = make_base(tmp_path / "src")
    archive = _tar(tmp_path / "s.tar.gz", _dir_members(src), symlink=("config2.json", "/etc/passwd"))
    with pytest.raises(StoreError, match="links and devices are not allowed"):
        store.install(archive)


def test_wrong_input_shape_refused(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="takes T=9 steps, manifest window_length is 8"):
        store.install(make_base(tmp_path / "src", t_in=9))


def test_adapter_install_checks_its_base(store: ModelStore, tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base)
    with pytest.raises(StoreError, match="belongs to base tiny@1 .* not installed"):
        store.install(adapter)
    store.install(base)
    installed = store.install(adapter)
    assert installed.kind == "adapter" and installed.base_sha256 == store.get("tiny@1").base_sha256
    assert store.adapter_path("site@1") == installed.path


def test_adapter_of_another_base_refused(store: ModelStore, tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    store.install(base)
    other = make_base(tmp_path / "other", name="other", seed=3)
    with pytest.raises(StoreError, match="not installed"):
        store.install(make_adapter(tmp_path / "a1", other, name="a1"))
    # claims our base's hash, but its tensors were made for a longer window
    wrong = make_adapter(tmp_path / "a2", base, name="a2", t_in=12)
    with pytest.raises(StoreError, match="does not fit base layer 'enc'"):
        store.install(wrong)
    # claims our base's hash, but targets a layer the base does not have
    renamed = make_adapter(tmp_path / "a3", base, name="a3", onnx_adapter=False)
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(renamed / "adapter_model.safetensors"))
    save_file({k.replace(".enc.", ".encoder.9."): v for k, v in tensors.items()},
              str(renamed / "adapter_model.safetensors"))
    integrity.write_manifest(renamed, integrity.load_manifest(renamed))
    with pytest.raises(StoreError, match="not a Linear layer of the base"):
        store.install(renamed)
    assert [m.ref for m in store.list()] == ["tiny@1"]


# ---- verify ----------------------------------------------------------------------------------
def test_verify_detects_a_corrupt_byte(store: ModelStore, tmp_path: Path) -> None:
    store.install(make_base(tmp_path / "src"))
    assert store.verify() == [("tiny@1", None)]
    _flip_byte(store.get("tiny@1").path / "model.onnx", 100)
    [(ref, problem)] = store.verify("tiny@1")
    assert ref == "tiny@1" and problem is not None and "model.onnx: sha256 mismatch" in problem


# ---- activate / rollback / remove -------------------------------------------------------------
def test_activate_rollback_remove(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(NoActiveModel):
        store.active()
    v1 = store.install(make_base(tmp_path / "v1", version="1"))
    v2 = store.install(make_base(tmp_path / "v2", version="2", seed=5))
    store.activate("tiny", "1")
    assert store.active() == v1.path.resolve()
    store.activate("tiny", "2")
    assert store.active() == v2.path.resolve() and store.get("tiny@2").active
    assert [(h["name"], h["version"]) for h in store.history()] == [("tiny", "1"), ("tiny", "2")]
    with pytest.raises(StoreError, match="is active"):
        store.remove("tiny@2")
    assert store.rollback().ref == "tiny@1"
    assert store.active() == v1.path.resolve()
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    store.remove("tiny@2")
    assert [m.ref for m in store.list()] == ["tiny@1"]
    assert not v2.path.exists()


def test_rollback_to_removed_model_refused(store: ModelStore, tmp_path: Path) -> None:
    store.install(make_base(tmp_path / "v1", version="1"))
    store.install(make_base(tmp_path / "v2", version="2", seed=5))
    store.activate("tiny", "1")
    store.activate("tiny", "2")
    store.activate("tiny", "1")
    store.remove("tiny@2")
    with pytest.raises(StoreError, match="tiny@2 has been removed"):
        store.rollback()
    assert store.active_model().ref == "tiny@1"


def test_activation_verifies_and_keeps_old_on_failure(store: ModelStore, tmp_path: Path) -> None:
    store.install(make_base(tmp_path / "v1", version="1"))
    v2 = store.install(make_base(tmp_path / "v2", version="2", seed=5))
    store.activate("tiny", "1")
    (v2.path / "config.json").write_text("{}")
    with pytest.raises(StoreError, match="config.json: sha256 mismatch"):
        store.activate("tiny", "2")
    assert store.active_model().ref == "tiny@1"
    assert len(store.history()) == 1


def test_adapter_cannot_be_activated_and_pins_its_base(store: ModelStore, tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    store.install(base)
    store.install(make_adapter(tmp_path / "a", base))
    with pytest.raises(StoreError, match="adapters are served on their base"):
        store.activate("site", "1")
    with pytest.raises(StoreError, match="is the base of site@1"):
        store.remove("tiny@1")
    store.remove("site@1")
    store.remove("tiny@1")
    assert store.list() == []


def test_activation_swap_is_atomic_for_readers(store: ModelStore, tmp_path: Path) -> None:
    paths = {store.install(make_base(tmp_path / f"v{i}", version=str(i), seed=i)).path.resolve() for i in (1, 2)}
    store.activate("tiny", "1")
    stop = threading.Event()
    seen: list[object] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(store.active())
            except Exception as exc:  # any error here means a reader saw a half-done swap
                seen.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(10):
            store.activate("tiny", "2" if i % 2 == 0 else "1")
    finally:
        stop.set()
        thread.join()
    assert seen and all(s in paths for s in seen), [s for s in seen if s not in paths][:3]


# ---- daemon notification --------------------------------------------------------------------------
def test_notify_daemon(tmp_path: Path) -> None:
    assert "no running daemon found" in notify_daemon(tmp_path)
    marker = tmp_path / "hup"
    code = ("import signal, time, pathlib, sys; p = pathlib.Path(sys.argv[1]); "
            "signal.signal(signal.SIGHUP, lambda *a: p.write_text('reload')); "
            "print('ready', flush=True); time.sleep(20)  # lora-gateway stand-in")
    proc = subprocess.Popen([sys.executable, "-c", code, str(marker)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        (tmp_path / "lora-gateway.pid").write_text(f"{proc.pid}\n")
        assert "SIGHUP sent" in notify_daemon(tmp_path)
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.read_text() == "reload"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert "is not running" in notify_daemon(tmp_path)
    other = subprocess.Popen(["sleep", "20"])
    try:
        (tmp_path / "lora-gateway.pid").write_text(str(other.pid))
        assert "not a lora-gateway process" in notify_daemon(tmp_path)
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait()


def test_shipped_example_adapter_fits_shipped_base(store: ModelStore) -> None:
    """If the bundled base is retrained, the example adapter must be re-made (docs/models.md)."""
    repo = Path(__file__).resolve().parent.parent
    base = store.install(repo / "models" / "base")
    adapter = store.install(repo / "models" / "site_adapters" / "example-site")
    assert adapter.kind == "adapter" and adapter.base_sha256 == base.base_sha256
    manifest = integrity.load_manifest(adapter.path)
    assert manifest["evaluation"]["val_loss_after"] < manifest["evaluation"]["val_loss_before"]
    assert manifest["export"]["onnx_adapter"]["parity_max_abs_diff"] < 1e-4
    # the bundled base carries its LoRA-input graph: it serves the adapter as installed
    base_m = integrity.load_manifest(base.path)
    assert base_m["lora_graph"]["file"] in base_m["files"]
    from models.runtime import ModelRuntime

    rt = ModelRuntime.load(base.path, ["cpu"], adapters={"example": adapter.path})
    plain = ModelRuntime.load(base.path, ["cpu"])
    assert (rt.graph_file, plain.graph_file) == ("model_lora.onnx", "model.onnx")
    window = np.random.default_rng(0).standard_normal((4, rt.window_length, 2)).astype(np.float32)
    np.testing.assert_allclose(rt.run(window)["embedding"], plain.run(window)["embedding"], atol=1e-4)
    assert np.max(np.abs(rt.run(window, "example")["reconstruction"] - plain.run(window)["reconstruction"])) > 1e-3


def _bundled_base_copy(dest: Path) -> Path:
    repo = Path(__file__).resolve().parent.parent
    dest.mkdir(parents=True)
    for path in (repo / "models" / "base").iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


def test_bundled_base_lora_graph_is_checked_on_install_and_verify(store: ModelStore, tmp_path: Path) -> None:
    """The LoRA-input graph is covered like model.onnx: its sha256 on install and verify,
    its inputs/outputs and LoRA weights against the manifest."""
    import json

    corrupt = _bundled_base_copy(tmp_path / "corrupt")
    _flip_byte(corrupt / "model_lora.onnx", -5)
    with pytest.raises(StoreError, match="model_lora.onnx: sha256 mismatch"):
        store.install(corrupt)
    renamed = _bundled_base_copy(tmp_path / "renamed")  # manifest.json is not hashed: its claims are checked
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["lora_graph"]["inputs"] = manifest["lora_graph"]["inputs"][:-1]
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="differ from the manifest's lora_graph.inputs"):
        store.install(renamed)
    other_output = _bundled_base_copy(tmp_path / "output")
    manifest = json.loads((other_output / "manifest.json").read_text())
    manifest["outputs"][1]["shape"] = ["N", "C", 8]
    (other_output / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="embedding"):
        store.install(other_output)
    assert store.list() == []
    good = store.install(_bundled_base_copy(tmp_path / "good"))
    assert store.verify() == [(good.ref, None)]
    _flip_byte(good.path / "model_lora.onnx", 200)
    [(_, problem)] = store.verify()
    assert problem is not None and "model_lora.onnx: sha256 mismatch" in problem


def test_cli_store_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    state = str(tmp_path / "state")
    good = make_base(tmp_path / "good")
    bad = make_base(tmp_path / "bad", version="2")
    (bad / "weights.pt").write_bytes(b"\x80\x04.")
    assert main(["model", "install", str(good), "--state-dir", state, "--activate", "--no-notify"]) == 0
    assert "installed tiny@1 (base)" in capsys.readouterr().out
    assert main(["model", "install", str(bad), "--state-dir", state]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing weights.pt") and "pickle" in err[0]
    assert main(["model", "list", "--json", "--state-dir", state]) == 0
    listed = __import__("json").loads(capsys.readouterr().out)
    assert [(m["name"], m["version"], m["active"]) for m in listed if not m["bundled"]] == [("tiny", "1", True)]
    # the bundled model is listed too, not serving while a store model is active
    assert [(m["kind"], m["active"]) for m in listed if m["bundled"]] == [("base", False)]
    installed = tmp_path / "state" / "models" / "installed" / "tiny" / "1" / "config.json"
    installed.write_text("{}")
    assert main(["model", "verify", "--state-dir", state]) == 1
    captured = capsys.readouterr()
    assert "tiny@1: FAILED: config.json: sha256 mismatch" in captured.out
    assert "1 of 1 installed model(s) failed verification" in captured.err
    assert main(["model", "rollback", "--state-dir", state]) == 1
    assert "nothing to roll back to" in capsys.readouterr().err

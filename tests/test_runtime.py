"""ModelRuntime and provider choice on real ONNX Runtime sessions of a tiny real model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from model_fixtures import T, make_adapter, make_base, reference

from models import integrity
from models.providers import CPU, choose_providers, describe_session
from models.runtime import ModelLoadError, ModelRuntime


# ---- providers ---------------------------------------------------------------------------
def test_choose_providers_filters_and_explains() -> None:
    chosen, reasons = choose_providers(["tensorrt", "cuda", "CPUExecutionProvider", "NoSuchProvider"])
    assert chosen[-1] == CPU
    assert all(p in ort.get_available_providers() for p in chosen)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDAExecutionProvider" not in chosen
        assert any(r.startswith("CUDAExecutionProvider: not available in this onnxruntime build") for r in reasons)
        assert any(r.startswith("TensorrtExecutionProvider: not available") for r in reasons)
    assert any(r.startswith("NoSuchProvider: unknown execution provider") for r in reasons)


def test_choose_providers_cpu_last_and_no_duplicates() -> None:
    assert choose_providers([]) == ([CPU], [])
    chosen, reasons = choose_providers(["cpu", "CPU", "cpu"])
    assert chosen == [CPU] and reasons == []
    available = [p for p in ort.get_available_providers() if p != CPU]
    if available:
        chosen, _ = choose_providers(["cpu", available[0]])
        assert chosen == [available[0], CPU]


def test_describe_session_names_providers_not_taken_up() -> None:
    notes = describe_session(["CUDAExecutionProvider", CPU], [CPU])
    assert len(notes) == 1 and notes[0].startswith("CUDAExecutionProvider: requested and available")
    assert describe_session([CPU], [CPU]) == []


# ---- loading --------------------------------------------------------------------------------
def test_load_runs_and_matches_reference(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    rt = ModelRuntime.load(base, ["cuda", "cpu"])
    assert rt.providers_in_use[0] == CPU
    assert rt.window_length == T and rt.adapter_names == []
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert any("CUDAExecutionProvider" in n for n in rt.provider_notes)
    window = np.random.default_rng(1).standard_normal((5, T, 3)).astype(np.float32)
    out = rt.run(window)
    want = reference(base, window)
    assert set(out) == {"reconstruction", "embedding"}
    assert out["reconstruction"].shape == (5, T, 3) and out["embedding"].shape == (5, 3, 3)
    for key in want:
        np.testing.assert_allclose(out[key], want[key], atol=1e-5)


def test_corrupt_byte_is_a_load_error(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    data = bytearray((base / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (base / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.onnx: sha256 mismatch"):
        ModelRuntime.load(base, ["cpu"])


def test_unloadable_graph_with_matching_hash_is_a_load_error(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    (base / "model.onnx").write_bytes(b"this is not an onnx graph")
    integrity.write_manifest(base, {k: v for k, v in integrity.load_manifest(base).items() if k != "files"})
    with pytest.raises(ModelLoadError, match="ONNX Runtime could not load it"):
        ModelRuntime.load(base, ["cpu"])


def test_wrong_input_length_is_a_load_error(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", t_in=T + 1)
    with pytest.raises(ModelLoadError, match=f"takes T={T + 1} steps, manifest window_length is {T}"):
        ModelRuntime.load(base, ["cpu"])


def test_missing_output_is_a_load_error(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    manifest = integrity.load_manifest(base)
    manifest["outputs"].append({"name": "class_probabilities", "shape": ["N", 4], "dtype": "float32"})
    integrity.write_manifest(base, manifest)
    with pytest.raises(ModelLoadError, match="declares output 'class_probabilities'"):
        ModelRuntime.load(base, ["cpu"])


def test_warm_up_failure_is_a_load_error(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", nan_weights=True)
    with pytest.raises(ModelLoadError, match="warm-up output .* is not finite"):
        ModelRuntime.load(base, ["cpu"])


def test_run_rejects_bad_windows(tmp_path: Path) -> None:
    rt = ModelRuntime.load(make_base(tmp_path / "base"), ["cpu"])
    with pytest.raises(ValueError, match="expected"):
        rt.run(np.zeros((1, T + 1, 2), np.float32))
    with pytest.raises(ValueError, match="dtype float64"):
        rt.run(np.zeros((1, T, 2)))
    with pytest.raises(ValueError, match="3-d"):
        rt.run(np.zeros((T, 2), np.float32))
    with pytest.raises(ValueError, match="unknown adapter 'x'"):
        rt.run(np.zeros((1, T, 2), np.float32), adapter="x")


# ---- adapters -------------------------------------------------------------------------------
def test_adapters_on_one_session_match_reference(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    a = make_adapter(tmp_path / "a", base, seed=1, rank=2, name="a")
    b = make_adapter(tmp_path / "b", base, seed=2, rank=4, name="b")
    rt = ModelRuntime.load(base, ["cpu"], adapters={"a": a, "b": b / "b.onnx_adapter"})
    assert rt.adapter_names == ["a", "b"]
    window = np.random.default_rng(2).standard_normal((6, T, 2)).astype(np.float32)
    for name, adapter_dir in ((None, None), ("a", a), ("b", b)):
        out = rt.run(window, adapter=name)
        want = reference(base, window, adapter_dir)
        for key in want:
            np.testing.assert_allclose(out[key], want[key], atol=1e-5)
    assert not np.allclose(rt.run(window, "a")["embedding"], rt.run(window, "b")["embedding"])


def test_adapters_from_several_threads(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    dirs = {f"s{i}": make_adapter(tmp_path / f"s{i}", base, seed=10 + i, name=f"s{i}") for i in range(3)}
    rt = ModelRuntime.load(base, ["cpu"], adapters=dirs)
    window = np.random.default_rng(3).standard_normal((4, T, 2)).astype(np.float32)
    want = {n: reference(base, window, d)["embedding"] for n, d in dirs.items()}
    errors: list[str] = []

    def worker(name: str) -> None:
        for _ in range(200):
            got = rt.run(window, adapter=name)["embedding"]
            if not np.allclose(got, want[name], atol=1e-5):
                errors.append(name)
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in list(dirs) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_adapter_of_other_shape_is_refused(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    other_base = make_base(tmp_path / "other", seed=7, t_in=T + 4)
    wrong = make_adapter(tmp_path / "wrong", other_base, t_in=T + 4)
    with pytest.raises(ModelLoadError, match="belongs to base"):
        ModelRuntime.load(base, ["cpu"], adapters={"w": wrong})
    with pytest.raises(ModelLoadError, match="has shape"):
        ModelRuntime.load(base, ["cpu"], adapters={"w": wrong / "site.onnx_adapter"})


def test_adapters_need_a_lora_graph(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", lora_graph=False)
    adapter = make_adapter(tmp_path / "a", base)
    with pytest.raises(ModelLoadError, match="no LoRA-input graph"):
        ModelRuntime.load(base, ["cpu"], adapters={"a": adapter})


def test_corrupt_adapter_file_is_refused(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "a", base)
    bad = tmp_path / "bad.onnx_adapter"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a readable ONNX Runtime adapter"):
        ModelRuntime.load(base, ["cpu"], adapters={"bad": bad})
    (adapter / "site.onnx_adapter").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        ModelRuntime.load(base, ["cpu"], adapters={"a": adapter})


def test_daemon_modules_do_not_import_torch() -> None:
    code = ("import sys, models.runtime, models.store, models.providers, models.integrity, models.site_data, "
            "models.cli.store, models.cli.adapters; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'peft', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_runtime_ignores_unlisted_files_but_store_refuses_them(tmp_path: Path) -> None:
    from models.store import ModelStore, StoreError

    base = make_base(tmp_path / "base")
    (base / "notes.onnx").write_bytes(b"left over")  # never loaded: only listed files are
    assert ModelRuntime.load(base, ["cpu"]).window_length == T
    with pytest.raises(StoreError, match="notes.onnx: file not listed"):
        ModelStore(tmp_path / "store").install(base)


def test_closed_runtime_refuses_runs(tmp_path: Path) -> None:
    rt = ModelRuntime.load(make_base(tmp_path / "base"), ["cpu"])
    rt.close()
    rt.close()
    with pytest.raises(RuntimeError, match="closed"):
        rt.run(np.zeros((1, T, 1), np.float32))

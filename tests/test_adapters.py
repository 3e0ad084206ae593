"""Adapter exports: LoRA-input graph, .onnx_adapter files, merged and int8 models, all checked
against peft in PyTorch; several adapters on one ONNX Runtime session (needs the [train] extra)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from train_fixtures import T, make_torch_base, random_adapter  # noqa: E402

from gateway.cli import main  # noqa: E402
from models import adapters, integrity  # noqa: E402
from models.architecture import load_model  # noqa: E402
from models.finetune import load_peft  # noqa: E402
from models.runtime import ModelRuntime  # noqa: E402
from models.store import ModelStore  # noqa: E402


@pytest.fixture(scope="module")
def lora_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base with its LoRA-input graph, and two adapters of different rank and alpha."""
    root = tmp_path_factory.mktemp("adapters")
    base = make_torch_base(root / "base")
    adapters.export_lora_graph(base)
    random_adapter(base, root / "north", seed=1, rank=4, alpha=8, name="north")
    random_adapter(base, root / "south", seed=2, rank=8, alpha=4, name="south",
                   targets=["encoder.0", "decoder.3"])  # fewer targets: the others stay empty
    for name in ("north", "south"):
        adapters.export_adapter_file(base, root / name)
    return base


def _windows(n: int, c: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, T, c)).astype(np.float32)


def _torch(model: torch.nn.Module, window: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        rec, emb = model(torch.from_numpy(window))
    return {"reconstruction": rec.numpy(), "embedding": emb.numpy()}


def test_lora_graph_without_adapter_is_the_base(lora_base: Path) -> None:
    manifest = integrity.load_manifest(lora_base)
    info = manifest["lora_graph"]
    assert info["file"] == "model_lora.onnx" and info["parity_no_adapter_max_abs_diff"] < 1e-4
    assert len(info["inputs"]) == 12  # A and B for six targets
    rt = ModelRuntime.load(lora_base, ["cpu"], adapters={})  # no adapters: the plain graph
    lora_rt = ModelRuntime.load(lora_base, ["cpu"], adapters={"n": lora_base.parent / "north"})
    window = _windows(7, 3)
    want = _torch(load_model(lora_base), window)
    for out in (rt.run(window), lora_rt.run(window)):
        for key in want:
            np.testing.assert_allclose(out[key], want[key], atol=1e-4)


def test_adapters_on_one_session_match_peft(lora_base: Path) -> None:
    root = lora_base.parent
    rt = ModelRuntime.load(lora_base, ["cpu"], adapters={"north": root / "north", "south": root / "south"})
    assert rt.adapter_names == ["north", "south"]
    for name in ("north", "south"):
        info = integrity.load_manifest(root / name)["export"]["onnx_adapter"]
        assert info["parity_max_abs_diff"] < 1e-4
        reference = load_peft(lora_base, root / name)
        for c in (1, 4):
            window = _windows(9, c, seed=c)
            got, want = rt.run(window, adapter=name), _torch(reference, window)
            for key in want:
                np.testing.assert_allclose(got[key], want[key], atol=1e-4)
    window = _windows(4, 2)
    north, south = rt.run(window, "north")["reconstruction"], rt.run(window, "south")["reconstruction"]
    assert np.max(np.abs(north - south)) > 1e-2  # the adapters really differ


def test_adapters_per_thread_on_one_session(lora_base: Path) -> None:
    root = lora_base.parent
    rt = ModelRuntime.load(lora_base, ["cpu"], adapters={"north": root / "north", "south": root / "south"})
    window = _windows(16, 3)
    want = {name: _torch(load_peft(lora_base, root / name), window)["embedding"] for name in ("north", "south")}
    want[None] = _torch(load_model(lora_base), window)["embedding"]
    wrong: list[str | None] = []

    def worker(name: str | None) -> None:
        for _ in range(100):
            if not np.allclose(rt.run(window, adapter=name)["embedding"], want[name], atol=1e-4):
                wrong.append(name)
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("north", "south", None) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_merged_export_parity_and_int8(lora_base: Path, tmp_path: Path) -> None:
    north = lora_base.parent / "north"
    manifest = adapters.export_merged(lora_base, north, tmp_path / "merged")
    assert manifest["kind"] == "merged" and manifest["export"]["parity_max_abs_diff"] < 1e-4
    merged = ModelRuntime.load(tmp_path / "merged", ["cpu"])
    shared = ModelRuntime.load(lora_base, ["cpu"], adapters={"north": north})
    window = _windows(5, 3)
    for key, value in shared.run(window, "north").items():
        np.testing.assert_allclose(merged.run(window)[key], value, atol=1e-4)
    q = adapters.export_merged(lora_base, north, tmp_path / "int8", int8=True)
    assert q["name"] == "north-merged-int8"
    assert q["export"]["size_bytes"] < q["export"]["float_size_bytes"]
    assert 0 < q["export"]["parity_max_abs_diff"] <= adapters.INT8_TOLERANCE
    store = ModelStore(tmp_path / "store")
    store.install(tmp_path / "int8")
    store.activate("north-merged-int8", "1")
    assert store.active_model().kind == "merged"


def test_over_tolerance_is_refused(lora_base: Path, tmp_path: Path) -> None:
    north = tmp_path / "north"
    shutil.copytree(lora_base.parent / "north", north)
    with pytest.raises(adapters.ExportError, match="merged export refused"):
        adapters.export_merged(lora_base, north, tmp_path / "m", tolerance=1e-12)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob("export-*"))
    before = integrity.load_manifest(north)
    (north / "north.onnx_adapter").unlink()
    integrity.write_manifest(north, {k: v for k, v in before.items() if k != "files"})
    with pytest.raises(adapters.ExportError, match="refused"):
        adapters.export_adapter_file(lora_base, north, tolerance=1e-12)
    assert not (north / "north.onnx_adapter").exists()


def test_adapter_of_another_base_is_refused(lora_base: Path, tmp_path: Path) -> None:
    other = make_torch_base(tmp_path / "other", steps=10, seed=3, name="other")
    stranger = random_adapter(other, tmp_path / "stranger", seed=4, rank=2, alpha=2, name="stranger")
    with pytest.raises(adapters.ExportError, match="belongs to base other@1"):
        adapters.export_adapter_file(lora_base, stranger)
    with pytest.raises(adapters.ExportError, match="belongs to base other@1"):
        adapters.export_merged(lora_base, stranger, tmp_path / "m")


def test_export_cli_and_store_round_trip(lora_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    shutil.copytree(lora_base, base)
    adapter = random_adapter(base, tmp_path / "east", seed=9, rank=2, alpha=4, name="east")
    assert main(["model", "export", "--base", str(base), "--adapter", str(adapter), "--adapter-file",
                 "--merged", str(tmp_path / "east-merged")]) == 0
    out = capsys.readouterr().out
    assert "parity vs peft" in out and (adapter / "east.onnx_adapter").is_file()
    state = tmp_path / "state"
    for path in (base, adapter, tmp_path / "east-merged"):
        assert main(["model", "install", str(path), "--state-dir", str(state)]) == 0
    assert main(["model", "activate", "east-merged@1", "--state-dir", str(state)]) == 0
    assert main(["model", "verify", "--state-dir", str(state)]) == 0
    store = ModelStore.for_state_dir(state)
    rt = ModelRuntime.load(store.get("test-base@1").path, ["cpu"], adapters={"east": store.adapter_path("east@1")})
    merged = ModelRuntime.load(store.active(), ["cpu"])
    window = _windows(3, 2)
    np.testing.assert_allclose(rt.run(window, "east")["embedding"], merged.run(window)["embedding"], atol=1e-4)
    assert main(["model", "export", "--base", str(base)]) == 1
    assert "say what to export" in capsys.readouterr().err


def test_shipped_example_adapter_matches_peft_on_the_bundled_base() -> None:
    repo = Path(__file__).resolve().parent.parent
    base = repo / "models" / "base"
    example = repo / "models" / "site_adapters" / "example-site"
    rt = ModelRuntime.load(base, ["cpu"], adapters={"example": example})
    reference = load_peft(base, example)
    window = np.random.default_rng(11).standard_normal((6, rt.window_length, 3)).astype(np.float32)
    want = _torch(reference, window)
    for key, value in rt.run(window, adapter="example").items():
        np.testing.assert_allclose(value, want[key], atol=1e-4)

"""Small real base models and site data for the ``train`` tests (torch + peft).

``make_torch_base`` pretrains a small PatchAutoencoder for a few hundred steps on the
synthetic generator's normal windows, saves it, exports it with the project's exporter and
writes its manifest, so tests do not depend on the shipped base. ``write_site_csv`` writes
a site's recording as users bring it: semicolons, decimal commas, a timestamp column, two
channels and a fault label column; the site has a compressor duty cycle the base never saw.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402

from models import integrity  # noqa: E402
from models.architecture import LORA_TARGETS, PatchAEConfig, PatchAutoencoder, load_model, save_model  # noqa: E402
from models.export import export_onnx  # noqa: E402
from models.synthetic import generate_device, normal_windows  # noqa: E402

T = 16


def make_torch_base(directory: Path, steps: int = 300, seed: int = 0, name: str = "test-base") -> Path:
    """Pretrain, save, export and describe a small base model in ``directory``."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    config = PatchAEConfig(window_length=T, patch_length=4, patch_dim=8, hidden_dim=32, embedding_dim=8)
    model = PatchAutoencoder(config)
    data = torch.from_numpy(normal_windows(seed + 100, 4096, T))[:, :, None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (128,), generator=gen)]
        loss = torch.mean((model(x)[0] - x) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_model(model, directory)
    info = export_onnx(model, directory / "model.onnx", T)
    integrity.write_manifest(directory, {
        "name": name, "version": "1", "kind": "base", "window_length": T, "embedding_dim": 8,
        "inputs": [{"name": "window", "shape": ["N", T, "C"], "dtype": "float32"}],
        "outputs": [{"name": "reconstruction", "shape": ["N", T, "C"], "dtype": "float32"},
                    {"name": "embedding", "shape": ["N", "C", 8], "dtype": "float32"}],
        "lora_targets": list(LORA_TARGETS), "export": info,
        "thresholds": {"calibration_steps": 64, "calibration_windows": 64},
    })
    return directory


def random_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int, alpha: float, name: str,
                   targets: list[str] | None = None) -> Path:
    """A peft adapter with random (non-zero) A and B, saved in the PEFT layout with a manifest."""
    torch.manual_seed(seed)
    model = get_peft_model(load_model(base_dir), LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                            target_modules=targets or list(LORA_TARGETS)))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname:
                p.copy_(torch.randn_like(p) * 0.15)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)
    base = integrity.load_manifest(base_dir)
    integrity.write_manifest(out_dir, {
        "name": name, "version": "1", "kind": "adapter", "window_length": base["window_length"],
        "inputs": base["inputs"], "outputs": base["outputs"],
        "base_model": f"{base['name']}@{base['version']}",
        "base_sha256": integrity.sha256_file(base_dir / "model.safetensors"),
        "lora": {"r": rank, "alpha": alpha, "target_modules": targets or list(LORA_TARGETS)},
    })
    return out_dir


def write_site_csv(path: Path, rows: int = 1600, seed: int = 4, n_faults: int = 3) -> np.ndarray:
    """A site CSV (``;`` and decimal commas) with columns time, temp_c, rh, fault; returns the labels."""
    dev = generate_device(seed, rows, kinds=("temperature", "humidity"), interval_s=300.0,
                          n_faults=n_faults, fault_free_prefix=rows // 2)
    values = dev.values.copy()
    duty = np.where((np.arange(rows) % 12) < 5, 1.0, 0.0)  # a compressor cycle this site has
    values[:, 0] += 2.0 * duty * dev.clean[:, 0].std()
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["time", "temp_c", "rh", "fault"])
        for i in range(rows):
            writer.writerow([f"{dev.timestamps[i]:.0f}", f"{values[i, 0]:.3f}".replace(".", ","),
                             f"{values[i, 1]:.3f}".replace(".", ","), int(dev.step_labels[i])])
    return dev.step_labels


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())

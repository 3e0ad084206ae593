"""The reproducible pretraining recipe of the base model (torch).

``pretrain(out_dir, steps, seed)`` trains a ``PatchAutoencoder`` from scratch on NORMAL
windows of the seeded field-sensor generator (``models.synthetic``), each channel
standardised over its own series (the per-device calibration the gateway applies), with
the mean squared reconstruction error. It then exports ONNX, checks ONNX Runtime against
PyTorch on held-out windows (raises ``ParityError`` beyond the tolerance), measures the
held-out reconstruction error on normal vs faulty windows, and writes
``model.safetensors``, ``config.json``, ``model.onnx`` and ``manifest.json``. Last, it
derives the LoRA-input graph ``model_lora.onnx`` from the saved weights
(``models.adapters.export_lora_graph``, also runnable alone as ``lora-gateway model export
--lora-graph``; manifest key ``lora_graph``, its sha256 under ``files``), so the base
serves ``.onnx_adapter`` files as it comes out of training.

Same seed, steps and settings give the same files, byte for byte (single thread,
deterministic ops; the LoRA graph is a pure function of the weights).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.architecture import (
    LORA_TARGETS,
    PatchAEConfig,
    PatchAutoencoder,
    save_model,
)
from models.export import DEFAULT_TOLERANCE, INPUT_NAME, check_parity, export_onnx
from models.manifest import (
    Manifest,
    TensorSpec,
    hash_files,
    load_manifest,
    write_manifest,
)
from models.scoring.settings import DEFAULTS as SCORING_DEFAULTS
from models.synthetic import (
    FAULT_KINDS,
    normal_windows,
    random_device,
    standardize_series,
)

log = logging.getLogger(__name__)

MODEL_NAME = "field-sensor-patch-ae"
MODEL_VERSION = "1.0.0"
DEFAULT_THRESHOLDS: dict[str, float] = dict(SCORING_DEFAULTS)
"""Default scoring settings written to the manifest (see models.scoring.scorer for meanings)."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights."""

    seed: int = 20261122
    steps: int = 8000
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    train_windows: int = 120_000
    series_length: int = 2016
    input_noise: float = 0.05

    @property
    def generator(self) -> dict[str, Any]:
        return {
            "module": "models.synthetic.normal_windows",
            "seed": self.seed,
            "n_windows": self.train_windows,
            "series_length": self.series_length,
            "faults": "none (normal data only)",
            "standardisation": "per series mean/std (per-device calibration)",
        }


def _lr(step: int, recipe: Recipe) -> float:
    warm = max(1, recipe.steps // 20)
    if step < warm:
        return recipe.learning_rate * (step + 1) / warm
    progress = (step - warm) / max(1, recipe.steps - warm)
    return recipe.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(config: PatchAEConfig, recipe: Recipe, log_every: int = 500) -> tuple[PatchAutoencoder, list[float]]:
    """Train a model from scratch; returns it (eval mode) and the loss curve (per step)."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    data = torch.from_numpy(
        normal_windows(recipe.seed, recipe.train_windows, config.window_length, recipe.series_length)
    )
    model = PatchAutoencoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    losses: list[float] = []
    model.train()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        idx = torch.from_numpy(rng.integers(0, data.shape[0], size=recipe.batch_size))
        target = data[idx]
        # denoising: the target is the clean window
        x = target + recipe.input_noise * torch.randn_like(target)
        rec, _ = model(x.unsqueeze(-1))
        loss = torch.mean((rec.squeeze(-1) - target) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == recipe.steps - 1):
            log.info("step %d/%d loss %.4f", step, recipe.steps, float(np.mean(losses[-log_every:])))
    return model.eval(), losses


def faulty_windows(seed: int, n_devices: int, window_length: int, length: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Single-channel windows ``[M, T]`` whose channel is faulty on every step of the window
    (``M`` varies), with the fault kind index of each; standardised on the fault-free prefix."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    kinds: list[int] = []
    for _ in range(n_devices):
        dev = random_device(int(rng.integers(0, 2**31)), length, n_faults=6, fault_free_prefix=500)
        z = standardize_series(dev.values, calibration_steps=500)
        for f in dev.faults:
            if f.kind == "spikes" or f.end - f.start < window_length:
                continue
            for c in f.channels:
                out.append(z[f.end - window_length : f.end, c])
                kinds.append(FAULT_KINDS.index(f.kind))
    return np.stack(out).astype(np.float32), np.asarray(kinds)


def reconstruction_report(model: PatchAutoencoder, seed: int) -> dict[str, Any]:
    """Held-out mean squared reconstruction error: normal windows vs faulty windows by kind."""
    t = model.config.window_length
    normal = normal_windows(seed + 1, 4000, t)
    faulty, kinds = faulty_windows(seed + 2, 300, t)
    with torch.no_grad():
        rn = model(torch.from_numpy(normal).unsqueeze(-1))[0].squeeze(-1).numpy()
        rf = model(torch.from_numpy(faulty).unsqueeze(-1))[0].squeeze(-1).numpy()
    en = np.mean((rn - normal) ** 2, axis=1)
    ef = np.mean((rf - faulty) ** 2, axis=1)
    by_kind = {
        FAULT_KINDS[k]: round(float(np.median(ef[kinds == k])), 4) for k in sorted(set(kinds.tolist()))
    }
    return {
        "heldout_normal_mse_median": round(float(np.median(en)), 4),
        "heldout_normal_mse_p99": round(float(np.quantile(en, 0.99)), 4),
        "heldout_faulty_mse_median": round(float(np.median(ef)), 4),
        "heldout_faulty_mse_median_by_kind": by_kind,
        "heldout_faulty_windows": int(ef.size),
        "heldout_normal_windows": int(en.size),
    }


def pretrain(
    out_dir: str | Path,
    steps: int | None = None,
    seed: int | None = None,
    config: PatchAEConfig | None = None,
    recipe: Recipe | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int = 1,
    lora_graph: bool = True,
) -> Manifest:
    """Train, export, check parity and write the model files into ``out_dir``.

    With ``lora_graph`` (the default, the shipped recipe) the LoRA-input graph is exported
    from the saved weights too (needs peft, like the rest of the [train] extra) and the
    returned manifest lists it; ``models.adapters.ExportError`` if its no-adapter parity
    with the base exceeds ``tolerance``.
    """
    torch.set_num_threads(threads)
    config = config or PatchAEConfig()
    recipe = recipe or Recipe()
    if steps is not None or seed is not None:
        recipe = Recipe(**{**asdict(recipe), **({"steps": steps} if steps else {}), **({"seed": seed} if seed is not None else {})})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_lora.onnx").unlink(missing_ok=True)  # derived from the old weights, if any
    started = time.perf_counter()
    model, losses = train(config, recipe)
    train_s = time.perf_counter() - started
    save_model(model, out)
    export_info = export_onnx(model, out / "model.onnx", config.window_length)
    heldout = normal_windows(recipe.seed + 3, 960, config.window_length)
    worst = check_parity(model, out / "model.onnx", heldout, tolerance=tolerance)
    evaluation = reconstruction_report(model, recipe.seed)
    head = float(np.mean(losses[: max(1, len(losses) // 20)]))
    tail = float(np.mean(losses[-max(1, len(losses) // 20) :]))
    manifest = Manifest(
        name=MODEL_NAME,
        version=MODEL_VERSION,
        files=hash_files(out, ["model.safetensors", "config.json", "model.onnx"]),
        window_length=config.window_length,
        inputs=[TensorSpec(INPUT_NAME, ["N", config.window_length, "C"])],
        outputs=[
            TensorSpec("reconstruction", ["N", config.window_length, "C"]),
            TensorSpec("embedding", ["N", "C", config.embedding_dim]),
        ],
        channel_independent=True,
        embedding_dim=config.embedding_dim,
        normalisation="per-device calibration: each channel standardised with the mean/std of the "
        "device's first calibration_steps readings (not per window)",
        sampling_interval_s=None,
        thresholds=dict(DEFAULT_THRESHOLDS),
        lora_targets=list(LORA_TARGETS),
        base_model=None,
        training={
            "recipe": asdict(recipe),
            "generator": recipe.generator,
            "objective": "mean squared reconstruction error on normal windows (denoising, input noise std "
            f"{recipe.input_noise})",
            "optimizer": "AdamW, linear warm-up then cosine decay, grad clip 1.0",
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "config": asdict(config),
            "loss_first_5pct": round(head, 5),
            "loss_last_5pct": round(tail, 5),
            "train_seconds": round(train_s, 1),
            "torch_threads": threads,
            "command": f"lora-gateway model pretrain --out DIR --steps {recipe.steps} --seed {recipe.seed}",
        },
        evaluation={"synthetic_reconstruction": evaluation},
        export={
            **export_info,
            "parity_max_abs_diff": worst,
            "parity_tolerance": tolerance,
            "parity_windows": int(heldout.shape[0]),
            "parity_channel_counts": [1, 3, 8],
        },
        extra={
            "sampling_interval_note": "trained on intervals of 1 min to 1 h (models.synthetic.INTERVALS_S); "
            "the model is interval-agnostic, T steps of whatever the device sends",
        },
    )
    write_manifest(manifest, out)
    if lora_graph:
        # imports peft: only when asked for
        from models.adapters import export_lora_graph

        export_lora_graph(out, targets=list(LORA_TARGETS), tolerance=tolerance)
        manifest = load_manifest(out)
    log.info("wrote %s (loss %.4f -> %.4f, parity %.2g)", out, head, tail, worst)
    return manifest

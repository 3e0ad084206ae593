"""Site fine-tuning: train a LoRA adapter (peft) on a site's own readings (torch; ``[train]`` extra).

Recipe (:func:`finetune`):

1. Data: a :class:`~models.site_data.SiteData` (or a CSV / JSON-lines recording read with
   :func:`~models.site_data.load_site_data`). Missing values are forward-filled.
2. Time-ordered split: the first ``1 - val_fraction`` of the rows train, the rest
   validate; no window crosses the boundary, so validation is data the adapter never saw
   and that comes after it in time.
3. Values are standardised per channel with the mean/std of the normal training rows
   (the gateway's per-device calibration does the same on a device's first readings).
4. Windows of T rows (stride ``stride``), channel-independent (each channel a series of its
   own, as the base model works). Windows touching a row labelled anomalous, or with more
   than a quarter of their values missing, are left out of training and of the validation
   loss: the adapter learns the site's *normal* behaviour (self-supervised reconstruction).
5. LoRA on the base's ``lora_targets`` (nn.Linear only; the base has LayerNorm, no
   BatchNorm, so nothing outside the adapter moves), AdamW, MSE reconstruction loss of
   windows moved by a random level (+-``level_shift``) plus ``anchor_weight`` x the change
   of the outputs on generic normal windows (issue 11 point 3: the adapter must not learn
   the training rows' level), tqdm per epoch, early stopping on the validation loss with
   ``patience``, the best epoch kept; the gate picks its strength (models.adapter_gate).
   When rows of the *training part* are labelled anomalous, a supervised term is added
   (weight ``label_weight``, 0 turns it off): whole-device windows ending on a labelled
   row must score at least ``label_margin`` x the high quantile of normal windows, in the
   gateway's own statistics (:mod:`models.label_objective`). Labels of the validation
   rows are never a training signal; they only keep anomalous windows out of the
   validation loss and score the result.
6. When labels exist, supervised validation metrics: the gateway's own scoring
   (:func:`models.evaluate.score_recording`) is run with the base, the adapted model and
   the PCA baseline, and point-wise precision/recall/F1/false-alarm rate on the
   validation rows are reported for each. The scorer calibrates on the training rows
   before the first labelled anomaly when that is at least half of them (a calibration
   stretch must be normal: faults inside it raise every threshold), else on all of them.

Output directory: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT layout) and
``manifest.json`` (kind ``adapter``, base name and weights sha256, data file and its sha256,
rows, channels, split, LoRA settings, validation loss before/after, supervised metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

from models import integrity
from models.adapter_gate import (  # noqa: F401 (AdapterRejected re-exported)
    STRENGTHS,
    AdapterRejected,
    _gate,
    _supervised,
    choose_strength,
    scorer_calibration_rows,
)
from models.architecture import LORA_TARGETS, PatchAutoencoder, load_model
from models.evaluate import fill_missing
from models.feedback_training import (
    feedback_gate,
    feedback_objective,
    feedback_windows,
    first_verdict_row,
    load_verdicts,
    mark_confirmed_rows,
)
from models.label_objective import (
    DEFAULT_MARGIN,
    device_windows,
    feedback_margin_loss,
    label_margin_loss,
    recency_weights,
)
from models.runtime import weights_sha256, window_length
from models.scoring.settings import settings_from
from models.site_data import SiteData, SiteDataError, load_site_data

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced and measured."""

    out_dir: Path
    manifest: dict[str, Any]
    val_loss_before: float
    val_loss_after: float
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def _windows(z: np.ndarray, ok_rows: np.ndarray, missing: np.ndarray, T: int, stride: int,
             limit: int, rng: np.random.Generator) -> np.ndarray:
    """Single-channel windows ``[M, T, 1]`` (M <= limit) of rows ``z [L, C]`` whose rows are
    all ok and at most a quarter missing. Sampled (in time order) before being copied, so a
    long recording never materialises all its windows."""
    L, C = z.shape
    if L < T:
        return np.zeros((0, T, 1), np.float32)
    starts = np.arange(0, L - T + 1, stride)
    bad = np.concatenate([[0], np.cumsum(~ok_rows)])
    clean = (bad[starts + T] - bad[starts]) == 0
    pairs = []
    for c in range(C):
        miss = np.concatenate([[0], np.cumsum(missing[:, c])])
        keep = starts[clean & ((miss[starts + T] - miss[starts]) <= T // 4)]
        pairs.append(np.stack([np.full(len(keep), c), keep], axis=1))
    chosen = np.concatenate(pairs)
    if len(chosen) > limit:
        chosen = chosen[np.sort(rng.choice(len(chosen), size=limit, replace=False))]
    idx = chosen[:, 1:2] + np.arange(T)[None, :]
    return z[idx, chosen[:, 0:1]].astype(np.float32)[:, :, None]


@torch.no_grad()
def _loss(model: torch.nn.Module, windows: np.ndarray, batch: int = 1024) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(windows[i:i + batch])
        rec, _ = model(x)
        total += float(torch.sum((rec - x) ** 2))
    return total / max(1, windows.size)


def finetune(base_dir: Path, data: SiteData | Path | np.ndarray, out_dir: Path, channels: list[str] | None = None,
             timestamp_column: str | None = None, label_column: str | None = None, rank: int = 8,
             alpha: int = 16, epochs: int = 30, patience: int = 4, lr: float = 3e-3, batch_size: int = 128,
             val_fraction: float = 0.25, stride: int = 1, max_windows: int = 20000,
             targets: list[str] | None = None, seed: int = 0, name: str = "site-adapter", version: str = "1",
             device_id: str | None = None, supervised_metrics: bool = True, progress: bool = True,
             label_weight: float = 0.1, label_margin: float = DEFAULT_MARGIN, train_rows: int | None = None,
             gate: bool = True, feedback: Path | None = None, feedback_weight: float = 1.0,
             level_shift: float = 1.0, anchor_weight: float = 1.0,
             strengths: tuple[float, ...] = STRENGTHS) -> FinetuneResult:
    """Train a LoRA adapter for the base model in ``base_dir`` on a site's data; see the module docstring.

    ``data`` is a :class:`SiteData`, a CSV / JSON-lines path (read with ``channels``,
    ``timestamp_column``, ``label_column``, ``device_id``), or a time-ordered array
    ``[rows, channels]`` (unlabelled). ``label_weight``/``label_margin``: the supervised
    term, used only when the training part has labelled anomalous rows. ``train_rows``: use
    only the leading rows (a device's calibration stretch); the rest of the data is ignored.
    ``gate``: export the adapter at the first of ``strengths`` that does not raise the
    false-alarm rate or lower recall on its own validation rows (``_gate``), else refuse
    it (``AdapterRejected``, nothing written), and, with
    ``feedback`` (a gateway's state dir), one that still fires on an alert an operator
    marked a false alarm or no longer fires on a confirmed one (``models.feedback_training``;
    the verdicts also train, weight ``feedback_weight``).
    Raises SiteDataError for data it cannot use (too few
    rows, unknown columns, nothing normal to learn from) and ValueError for bad settings.
    Writes ``out_dir`` (created; existing adapter files in it are replaced).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if rank < 1 or alpha <= 0 or epochs < 1 or not 0.05 <= val_fraction <= 0.5 or stride < 1:
        raise ValueError("need rank >= 1, alpha > 0, epochs >= 1, 0.05 <= val_fraction <= 0.5, stride >= 1")
    if label_weight < 0 or label_margin <= 1.0 or level_shift < 0 or anchor_weight < 0 or not strengths \
            or any(not 0 < s <= 1 for s in strengths):
        raise ValueError("need label_weight, level_shift, anchor_weight >= 0, label_margin > 1, strengths in (0, 1]")
    base_dir = Path(base_dir)
    base_manifest = integrity.load_manifest(base_dir)
    integrity.verify_dir(base_dir, base_manifest)
    T = window_length(base_manifest)
    if isinstance(data, np.ndarray):  # plain time-ordered rows [L, C]
        values = data if data.ndim == 2 else data.reshape(-1, 1)
        names = list(channels or [f"ch{i}" for i in range(values.shape[1])])
        data = SiteData(values=values, timestamps=np.arange(len(values), dtype=np.float64), channels=names)
    elif not isinstance(data, SiteData):
        if not channels:
            raise SiteDataError("name the channels to train on (--channels)")
        data = load_site_data(Path(data), channels, timestamp_column, label_column, device_id)
    if train_rows is not None:
        if train_rows < 2 * T:
            raise ValueError(f"--train-rows must be at least {2 * T} (two windows)")
        if train_rows < data.rows:
            data = SiteData(values=data.values[:train_rows], timestamps=data.timestamps[:train_rows],
                            channels=data.channels, labels=None if data.labels is None else data.labels[:train_rows],
                            source=data.source, sha256=data.sha256,
                            notes=[*data.notes, f"trained on the leading {train_rows} of {data.rows} rows"])
    verdicts = load_verdicts(Path(feedback), data.channels, device_id) if feedback is not None else None
    marked = 0
    if verdicts is not None:
        labels, marked = mark_confirmed_rows(verdicts, data.timestamps, data.labels)
        data = dataclasses.replace(data, labels=labels) if marked or data.labels is not None else data
    L = data.rows
    split = int(round(L * (1 - val_fraction)))
    if split < 2 * T or L - split < T:
        raise SiteDataError(f"{data.source}: {L} rows is too few: with T={T} and val_fraction={val_fraction} "
                            f"it needs at least {math.ceil(max(2 * T / (1 - val_fraction), T / val_fraction))} rows")
    missing = ~np.isfinite(data.values)
    values = fill_missing(data.values)
    anomalous = data.labels if data.labels is not None else np.zeros(L, dtype=bool)
    normal_train = ~anomalous[:split]
    if normal_train.sum() < T:
        raise SiteDataError(f"{data.source}: fewer than {T} normal rows in the training part")
    mean = values[:split][normal_train].mean(axis=0)
    std = values[:split][normal_train].std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    z = ((values - mean) / std).astype(np.float32)
    train = _windows(z[:split], ~anomalous[:split], missing[:split], T, stride, max_windows, rng)
    val = _windows(z[split:], ~anomalous[split:], missing[split:], T, stride, max(1, max_windows // 4), rng)
    if len(train) < 8 or len(val) < 1:
        raise SiteDataError(f"{data.source}: only {len(train)} training / {len(val)} validation windows of "
                            f"{T} clean normal rows; bring more data or fewer gaps")

    # supervised term: whole-device windows of the training part only
    empty = np.zeros((0, T, z.shape[1]), np.float32)
    fb_confirmed, fb_false = feedback_windows(verdicts, mean, std, T, rng) if verdicts is not None else (empty, empty)
    if len(fb_false):  # what the operator called normal is normal data to reconstruct, too
        train = np.concatenate([train, fb_false.transpose(0, 2, 1).reshape(-1, T, 1)])
    use_feedback = feedback_weight > 0 and len(fb_confirmed) + len(fb_false) > 0
    sup_anomalous, sup_normal = (device_windows(z[:split], anomalous[:split], missing[:split], T, max_windows, rng)
                                 if (label_weight > 0 and anomalous[:split].any()) or use_feedback else (empty, empty))
    supervised = label_weight > 0 and len(sup_anomalous) >= 4 and len(sup_normal) >= 64
    fb_normal = sup_normal
    first = first_verdict_row(verdicts, data.timestamps) if verdicts is not None else None
    if use_feedback and first is not None and first >= T + 64:  # normal = what the daemon saw before the verdicts
        fb_normal = device_windows(z[:first], anomalous[:first], missing[:first], T, max_windows, rng)[1]
    use_feedback = use_feedback and len(fb_normal) >= 64
    weights = recency_weights(T, settings_from(base_manifest)["recency_halflife"])
    sup_batch, ref_batch = 32, 256

    base_model: PatchAutoencoder = load_model(base_dir)
    for p in base_model.parameters():
        p.requires_grad_(False)
    target_modules = list(targets or base_manifest.get("lora_targets") or LORA_TARGETS)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0, bias="none")
    model = get_peft_model(base_model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = anchor_rec = anchor_emb = None
    emb_scale = 1.0
    if anchor_weight > 0:  # generic normal windows whose outputs must stay the base's
        from models.synthetic import normal_windows
        anchor = torch.from_numpy(normal_windows(seed + 7, 2048, T)[:, :, None])
        with torch.no_grad(), model.disable_adapter():
            anchor_rec, anchor_emb = model(anchor)
        emb_scale = float(torch.mean(anchor_emb ** 2)) + 1e-9
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    def objective() -> tuple[float, float]:  # (validation loss, verdicts' term): early stopping on their sum
        fb = (feedback_objective(model, fb_confirmed, fb_false, fb_normal, weights, label_margin)
              if use_feedback else 0.0)
        return _loss(model, val), fb

    before, fb_before = objective()
    best, best_epoch, bad_epochs = before + feedback_weight * fb_before, 0, 0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    history: list[dict[str, float]] = []
    started = time.monotonic()
    bar = tqdm(range(1, epochs + 1), desc=f"finetune {name}", unit="epoch", disable=not progress,
               file=sys.stderr, leave=False)
    epoch = 0
    for epoch in bar:
        model.train()
        order = rng.permutation(len(train))
        total = sup_total = 0.0
        for i in range(0, len(order), batch_size):
            x = torch.from_numpy(train[order[i:i + batch_size]])
            if level_shift > 0:  # each window at another level: learn the shape, not the training rows' level
                x = x + torch.from_numpy(rng.uniform(-level_shift, level_shift, (len(x), 1, 1)).astype(np.float32))
            rec, _ = model(x)
            loss = torch.mean((rec - x) ** 2)
            total += float(loss.detach()) * len(x)
            if anchor is not None and anchor_rec is not None and anchor_emb is not None:
                j = torch.from_numpy(rng.integers(0, len(anchor), batch_size))
                ra, ea = model(anchor[j])
                loss = loss + anchor_weight * (torch.mean((ra - anchor_rec[j]) ** 2)
                                               + torch.mean((ea - anchor_emb[j]) ** 2) / emb_scale)
            if supervised:
                a = torch.from_numpy(sup_anomalous[rng.integers(0, len(sup_anomalous), sup_batch)])
                n = torch.from_numpy(sup_normal[rng.integers(0, len(sup_normal), ref_batch)])
                sup_loss = label_margin_loss(model, a, n, weights, label_margin)
                sup_total += float(sup_loss.detach()) * len(x)
                loss = loss + label_weight * sup_loss
            if use_feedback:
                c, f = (torch.from_numpy(w[rng.integers(0, len(w), min(sup_batch, len(w)))]) for w in (fb_confirmed, fb_false))
                n = torch.from_numpy(fb_normal[rng.integers(0, len(fb_normal), ref_batch)])
                loss = loss + feedback_weight * feedback_margin_loss(model, c, f, n, weights, label_margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_loss = total / len(train)
        val_loss, fb_loss = objective()
        history.append({"epoch": epoch, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6)}
                       | ({"label_loss": round(sup_total / len(train), 6)} if supervised else {})
                       | ({"feedback_loss": round(fb_loss, 6)} if use_feedback else {}))
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=f"{best:.4f}")
        if val_loss + feedback_weight * fb_loss < best - 1e-7:
            best, best_epoch, bad_epochs = val_loss + feedback_weight * fb_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                break
    bar.close()
    model.load_state_dict(best_state, strict=False)
    after, fb_after = objective()

    evaluation: dict[str, Any] = {"val_loss_before": round(before, 6), "val_loss_after": round(after, 6),
                                  "val_windows": int(len(val)), "loss": "MSE of reconstruction, standardised units"}
    strength = 1.0
    if gate:
        reference = load_model(base_dir)  # the base, as the gates compare with it at every strength

        def check() -> tuple[list[str], dict[str, Any]]:  # both gates on the model at its current strength
            report: dict[str, Any] = {}
            try:
                report["gate"] = _gate(reference, model, values, data.labels, split, T, base_manifest)
            except ValueError as exc:  # too few rows to calibrate the scorer on the training part
                report["gate"] = {"skipped": str(exc), "passed": True, "reasons": []}
            reasons = [f"{r} (scorer calibrated on the {report['gate'].get('calibration_rows')} first rows)"
                       for r in report["gate"]["reasons"]]
            if verdicts is not None and verdicts.windows:
                cal = scorer_calibration_rows(anomalous, split)
                cal = min(cal, first) if first is not None and first >= T + 8 else cal
                report["feedback_gate"] = feedback_gate(reference, model, values, data.timestamps, cal,
                                                        verdicts, T, base_manifest)
                reasons += [f"{r} (scorer calibrated on the {cal} rows before the first judged alert)"
                            for r in report["feedback_gate"]["reasons"]]
            return reasons, report

        strength, report, tried = choose_strength(model, strengths, check)
        evaluation.update(report)
        evaluation["gate"] |= {"strength": strength, "tried": tried}
        if strength != 1.0:
            evaluation["val_loss_exported"] = round(_loss(model, val), 6)

    # the supervised metrics describe the adapter as exported (at the strength the gate kept)
    if data.labels is not None and supervised_metrics and data.labels[split:].any():
        try:
            evaluation["supervised"] = {
                "split": "validation rows (after the training rows), scored as the gateway does; the scorer "
                         "calibrates on the first calibration_rows rows",
                **_supervised({"base": load_model(base_dir), "adapter": model}, values, data.labels, split, T,
                              base_manifest),
            }
        except ValueError as exc:  # too few rows to calibrate the scorer
            evaluation["supervised"] = {"skipped": str(exc)}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("adapter_model.safetensors", "adapter_config.json", "README.md", integrity.MANIFEST):
        (out_dir / stale).unlink(missing_ok=True)
    model.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)  # peft's template card; manifest.json describes the adapter
    manifest = {
        "name": name, "version": version, "kind": "adapter",
        "window_length": T, "inputs": base_manifest["inputs"], "outputs": base_manifest["outputs"],
        "embedding_dim": base_manifest.get("embedding_dim"),
        "base_model": f"{base_manifest.get('name')}@{base_manifest.get('version')}",
        "base_sha256": weights_sha256(base_manifest),
        "lora_targets": target_modules,
        "lora": {"r": rank, "alpha": alpha, "scaling": alpha / rank, "target_modules": target_modules,
                 "strength": strength},
        "thresholds": base_manifest.get("thresholds", {}),
        "training": {
            "method": "LoRA (peft), self-supervised reconstruction of normal windows"
                      + ("; rows labelled anomalous excluded" if data.labels is not None else "")
                      + ("; supervised margin term on labelled training windows (models.label_objective)"
                         if supervised else ""),
            "label_objective": {"used": supervised, "weight": label_weight, "margin": label_margin,
                                "anomalous_windows": int(len(sup_anomalous)), "normal_windows": int(len(sup_normal)),
                                "labelled_training_rows": int(anomalous[:split].sum())},
            "feedback": None if verdicts is None else {
                "source": str(feedback), "verdicts": verdicts.verdicts, "skipped": verdicts.skipped,
                "used": {"confirmed": verdicts.count("confirmed"), "false_alarm": verdicts.count("false_alarm")},
                "windows": {"confirmed": len(fb_confirmed), "false_alarm": len(fb_false)},
                "rows_marked_confirmed": marked, "weight": feedback_weight, "trained": use_feedback,
                "objective_before": round(fb_before, 6), "objective_after": round(fb_after, 6)},
            "data_file": data.source, "data_sha256": data.sha256, "rows": L, "channels": data.channels,
            "timestamp_column": timestamp_column, "label_column": label_column,
            "time_range": [float(data.timestamps[0]), float(data.timestamps[-1])],
            "split": {"train_rows": split, "val_rows": L - split, "order": "time", "leading_rows_used": L},
            "train_windows": int(len(train)), "window_length": T, "stride": stride,
            "standardisation": {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]},
            "optimizer": {"name": "AdamW", "lr": lr, "batch_size": batch_size},
            "epochs_max": epochs, "epochs_run": epoch, "best_epoch": best_epoch, "patience": patience,
            "seed": seed, "seconds": round(time.monotonic() - started, 2), "history": history,
            "data_notes": data.notes, "torch": torch.__version__,
        },
        "evaluation": evaluation,
    }
    written = integrity.write_manifest(out_dir, manifest)
    log.info("adapter %s@%s: validation loss %.5f -> %.5f (%d epochs, best %d)", name, version, before, after,
             epoch, best_epoch)
    return FinetuneResult(out_dir, written, before, after, epoch, best_epoch, history)


def load_peft(base_dir: Path, adapter_dir: Path) -> PeftModel:
    """The base model with an adapter applied (eval mode, unmerged)."""
    return PeftModel.from_pretrained(load_model(Path(base_dir)), str(adapter_dir)).eval()

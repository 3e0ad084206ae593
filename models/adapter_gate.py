"""The adapter gate of ``model finetune``: score the validation rows as the gateway would,
with the base and with the adapter, and refuse an adapter that does worse (torch; ``[train]``).

- :func:`_gate`: false-alarm rate (and recall, where labelled) on the validation rows, the
  scorer calibrated on the training rows.
- :func:`_supervised`: point-wise metrics on the validation rows, model beside PCA.
- :func:`feedback_gate`: the operators' verdicts (``models.feedback_training``): an adapter
  that still fires on an alert marked a false alarm, or no longer fires on a confirmed
  one the base fires on, is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from models.evaluate import point_metrics, score_recording
from models.scoring.settings import settings_from

__all__ = ["STRENGTHS", "AdapterRejected", "TorchSession", "lora_deltas", "scorer_calibration_rows", "set_strength"]

LOG_SCORE_MARGIN = 0.01
"""How much higher the adapter's mean log-score on the normal validation rows may be than the base's
(0.01: 1 % on their geometric mean; measured on the plant look-alike: 0 refused 12 of 34 adapters
whose pooled figures beat the base's, docs/models.md)."""


class TorchSession:
    """The slice of an ONNX Runtime session that models.evaluate uses, backed by a torch model."""

    class _Arg:
        def __init__(self, name: str) -> None:
            self.name = name

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def get_inputs(self) -> list[TorchSession._Arg]:
        return [self._Arg("window")]

    def get_outputs(self) -> list[TorchSession._Arg]:
        return [self._Arg("reconstruction"), self._Arg("embedding")]

    @torch.no_grad()
    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rec, emb = self.model(torch.from_numpy(np.ascontiguousarray(feeds["window"])))
        out = {"reconstruction": rec.numpy(), "embedding": emb.numpy()}
        return [out[n] for n in names]


def scorer_calibration_rows(labels: np.ndarray, split: int) -> int:
    """Rows the scorer calibrates on for the supervised metrics: the training rows before
    the first labelled anomaly when that is at least half of them, else all ``split``."""
    first = np.flatnonzero(labels[:split])
    return int(first[0]) if len(first) and first[0] >= split // 2 else split


def _supervised(models: dict[str, torch.nn.Module], values: np.ndarray, labels: np.ndarray, split: int, T: int,
                manifest: dict[str, Any]) -> dict[str, Any]:
    """Point-wise metrics on the rows from ``split`` on, for each model and the PCA baseline."""
    settings = settings_from(manifest)
    cal = scorer_calibration_rows(labels, split)
    evaluated = np.arange(len(labels)) >= split
    out: dict[str, Any] = {"calibration_rows": cal}
    for i, (key, model) in enumerate(models.items()):
        scores = score_recording(values, TorchSession(model), T, calibration_rows=cal, settings=settings,
                                 with_pca=i == 0)
        out[key] = point_metrics(labels, scores.alert, evaluated).as_dict()
        if i == 0:
            out["pca"] = point_metrics(labels, scores.pca_alert, evaluated).as_dict()
    return out


class AdapterRejected(ValueError):
    """The adapter did worse than the base on its own validation rows; nothing was written.
    The message is one line saying what and by how much."""


STRENGTHS = (1.0, 0.5, 0.25)
"""Strengths (fractions of the trained LoRA delta) ``model finetune`` tries, strongest first."""


def lora_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trained ``lora_B`` weights: strength 1 (``set_strength``)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


@torch.no_grad()
def set_strength(model: torch.nn.Module, trained: dict[str, torch.Tensor], strength: float) -> None:
    """Scale the adapter's delta to ``strength`` x the trained one (lora_B is the delta's last
    factor, so the saved, merged and ONNX exports all carry it; 0 = the base)."""
    for n, p in model.named_parameters():
        if n in trained:
            p.copy_(trained[n] * strength)


def choose_strength(model: torch.nn.Module, strengths: Sequence[float],
                    check: Callable[[], tuple[list[str], dict[str, Any]]]) -> tuple[float, dict[str, Any], list[Any]]:
    """Try the adapter at each of ``strengths`` (strongest first; ``check`` runs the gates on
    ``model`` as it is and returns the reasons to refuse and the figures) and leave it at the
    first that passes: (strength, its figures, every try). Raises ``AdapterRejected`` with
    one line naming each strength and why when none passes (the model back at strength 1)."""
    trained = lora_deltas(model)
    tried: list[dict[str, Any]] = []
    for strength in strengths:
        set_strength(model, trained, strength)
        reasons, report = check()
        tried.append({"strength": strength, "reasons": reasons})
        if not reasons:
            return strength, report, tried
    set_strength(model, trained, 1.0)
    raise AdapterRejected("adapter not exported: " + "; ".join(
        f"at strength {t['strength']:g} it {' and '.join(t['reasons'])}" for t in tried))


def _normal_scores(model: torch.nn.Module, values: np.ndarray, y: np.ndarray, cal: int, split: int, T: int,
                   settings: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(alerts [L], scores of the normal validation rows) with the scorer calibrated on ``cal`` rows."""
    scores = score_recording(values, TorchSession(model), T, calibration_rows=cal, settings=settings, with_pca=False)
    normal = (np.arange(len(values)) >= split) & ~y
    return scores.alert, np.nan_to_num(scores.score[normal], nan=0.0)


def _gate(base: torch.nn.Module, adapted: torch.nn.Module, values: np.ndarray, labels: np.ndarray | None,
          split: int, T: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """Score the validation rows (from ``split`` on) as the gateway would, calibrating the
    scorer on the training rows (the rows the adapter learnt: exactly what a device serving
    it meets), with the base and with the adapter. The adapter passes when, on the normal
    validation rows, its false-alarm rate is no higher than the base's, and, where that rate
    is 0 for both (a few hundred rows rarely alarm: the rate then says nothing), its scores
    are no higher in distribution (``log_score``, the mean log-score, which moves with every
    row; ``LOG_SCORE_MARGIN``); and, where the validation rows hold labelled anomalies, its
    recall is no lower."""
    settings = settings_from(manifest)
    y = labels if labels is not None else np.zeros(len(values), dtype=bool)
    cal = scorer_calibration_rows(y, split)
    evaluated = np.arange(len(values)) >= split
    out: dict[str, Any] = {"calibration_rows": cal, "validation_rows": int(evaluated.sum()),
                           "false_alarm_target": settings["false_alarm_target"]}
    for key, model in (("base", base), ("adapter", adapted)):
        alert, normal = _normal_scores(model, values, y, cal, split, T, settings)
        m = point_metrics(y, alert, evaluated)
        out[key] = {"false_alarm_rate": m.false_alarm_rate, "recall": m.recall if y[evaluated].any() else None,
                    "normal_windows_over_threshold": round(float(np.mean(normal >= settings["raise"])), 6)
                    if len(normal) else 0.0,
                    "log_score": round(float(np.mean(np.log(np.maximum(normal, 1e-6)))), 6) if len(normal) else 0.0}
    b, a = out["base"], out["adapter"]
    reasons = []
    if a["false_alarm_rate"] > b["false_alarm_rate"]:
        reasons.append(f"raises the false-alarm rate on its validation rows {b['false_alarm_rate']:.4f} -> "
                       f"{a['false_alarm_rate']:.4f}")
    elif a["false_alarm_rate"] == b["false_alarm_rate"] == 0 and a["log_score"] > b["log_score"] + LOG_SCORE_MARGIN:
        reasons.append(f"raises the normal validation rows' scores (mean log-score {b['log_score']:.3f} -> "
                       f"{a['log_score']:.3f})")
    if b["recall"] is not None and a["recall"] < b["recall"]:
        reasons.append(f"lowers recall on its validation rows {b['recall']:.3f} -> {a['recall']:.3f}")
    out["passed"], out["reasons"] = not reasons, reasons
    return out

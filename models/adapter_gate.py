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

from typing import Any

import numpy as np
import torch

from models.evaluate import point_metrics, score_recording
from models.scoring.settings import settings_from

__all__ = ["AdapterRejected", "TorchSession", "scorer_calibration_rows"]


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


def _gate(base: torch.nn.Module, adapted: torch.nn.Module, values: np.ndarray, labels: np.ndarray | None,
          split: int, T: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """Score the validation rows (from ``split`` on) as the gateway would, calibrating the
    scorer on the training rows (the rows the adapter learnt: exactly what a device serving
    it meets), with the base and with the adapter. The adapter passes when its false-alarm
    rate on the normal validation rows is no higher than the base's, and, where the
    validation rows hold labelled anomalies, its recall no lower."""
    settings = settings_from(manifest)
    y = labels if labels is not None else np.zeros(len(values), dtype=bool)
    cal = scorer_calibration_rows(y, split)
    evaluated = np.arange(len(values)) >= split
    out: dict[str, Any] = {"calibration_rows": cal, "validation_rows": int(evaluated.sum()),
                           "false_alarm_target": settings["false_alarm_target"]}
    for key, model in (("base", base), ("adapter", adapted)):
        scores = score_recording(values, TorchSession(model), T, calibration_rows=cal, settings=settings,
                                 with_pca=False)
        m = point_metrics(y, scores.alert, evaluated)
        normal = evaluated & ~y
        over = float(np.mean(np.nan_to_num(scores.score[normal]) >= settings["raise"])) if normal.any() else 0.0
        out[key] = {"false_alarm_rate": m.false_alarm_rate, "recall": m.recall if y[evaluated].any() else None,
                    "normal_windows_over_threshold": round(over, 6)}
    b, a = out["base"], out["adapter"]
    reasons = []
    if a["false_alarm_rate"] > b["false_alarm_rate"]:
        reasons.append(f"raises the false-alarm rate on its validation rows {b['false_alarm_rate']:.4f} -> "
                       f"{a['false_alarm_rate']:.4f}")
    if b["recall"] is not None and a["recall"] < b["recall"]:
        reasons.append(f"lowers recall on its validation rows {b['recall']:.3f} -> {a['recall']:.3f}")
    out["passed"], out["reasons"] = not reasons, reasons
    return out

"""Operator verdicts as fine-tuning data and as a gate (``model finetune --feedback``; ``[train]``).

The verdicts and the readings they label come from a gateway's state dir
(:func:`models.feedback_labels.labelled_windows`). Fine-tuning uses them three ways:

- rows of the site data that an alert marked ``confirmed`` covers (matched by timestamp:
  the raise reading and the readings after it) are labelled anomalous
  (:func:`mark_confirmed_rows`), so the self-supervised reconstruction never learns the
  fault as normal, and the labelled-row margin term sees them;
- every verdict's windows (each ending on the raise reading or a reading after it, in the
  site's standardisation) enter the margin term (:func:`models.label_objective.feedback_margin_loss`):
  confirmed ones pushed above the margin, false alarms below the normal windows' quantile;
  false alarms' single-channel windows also join the reconstruction training as normal
  data (:func:`feedback_windows`);
- the gate (:func:`feedback_gate`) scores each verdict's readings as the gateway would,
  with the base and with the adapter: an adapter whose alert decision still fires on an
  alert marked a false alarm, or no longer fires on a confirmed one that the base fires on,
  is refused with the alert keys and scores in the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.adapter_gate import TorchSession
from models.evaluate import fill_missing, score_recording
from models.feedback_labels import FEEDBACK_FILE, LabelledSet, LabelledWindow, labelled_windows
from models.scoring.settings import settings_from

MAX_WINDOWS_PER_VERDICT = 64


def load_verdicts(source: Path, channels: Sequence[str], device_id: str | None) -> LabelledSet:
    """The verdicts under a state dir (or beside an ``alert-feedback.jsonl`` file given
    directly); ValueError when there is no feedback file."""
    source = Path(source)
    state_dir = source.parent if source.is_file() else source
    if not (state_dir / FEEDBACK_FILE).exists():
        raise ValueError(f"--feedback {source}: no {FEEDBACK_FILE} there (give the gateway's state dir)")
    return labelled_windows(state_dir, channels, device_id)


def _rows_of(w: LabelledWindow, index: dict[float, int]) -> list[int]:
    """Data rows the verdict's raise reading and the readings after it fall on (by time)."""
    out = []
    for t in w.timestamps[w.raise_row:]:
        if np.isfinite(t) and float(t) in index:
            out.append(index[float(t)])
    return out


def mark_confirmed_rows(labelled: LabelledSet, timestamps: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, int]:
    """``labels`` (all False when None) with the rows that confirmed alerts cover set, and
    how many rows that newly labelled."""
    out = np.zeros(len(timestamps), dtype=bool) if labels is None else labels.copy()
    index = {float(t): i for i, t in enumerate(timestamps)}
    before = int(out.sum())
    for w in labelled.windows:
        if w.label == "confirmed":
            out[_rows_of(w, index)] = True
    return out, int(out.sum()) - before


def first_verdict_row(labelled: LabelledSet, timestamps: np.ndarray) -> int | None:
    """The data row where the earliest verdict's readings begin (its window before the
    raise included), or None when no verdict's readings are in the data. The rows before
    it are what the daemon had seen before the first alert an operator judged: the
    reference of normal for the verdicts' margin term and the gate's calibration."""
    index = {float(t): i for i, t in enumerate(timestamps)}
    starts = [index[float(w.timestamps[w.raise_row])] - w.raise_row for w in labelled.windows
              if np.isfinite(w.timestamps[w.raise_row]) and float(w.timestamps[w.raise_row]) in index]
    return max(0, min(starts)) if starts else None


def feedback_windows(labelled: LabelledSet, mean: np.ndarray, std: np.ndarray, T: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(confirmed ``[Mc, T, C]``, false alarms ``[Mf, T, C]``) in the site's standardisation:
    each verdict's windows ending on its raise reading or a later one (at most
    ``MAX_WINDOWS_PER_VERDICT`` each); a verdict with fewer than T readings gives none."""
    parts: dict[str, list[np.ndarray]] = {"confirmed": [], "false_alarm": []}
    for w in labelled.windows:
        if len(w.values) < T:
            continue
        z = ((fill_missing(w.values) - mean) / std).astype(np.float32)
        ends = np.arange(max(w.raise_row, T - 1), len(z))
        if len(ends) > MAX_WINDOWS_PER_VERDICT:
            ends = np.sort(rng.choice(ends, size=MAX_WINDOWS_PER_VERDICT, replace=False))
        parts[w.label].append(z[ends[:, None] - T + 1 + np.arange(T)[None, :]])
    C = len(mean)

    def stack(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs).astype(np.float32) if xs else np.zeros((0, T, C), np.float32)

    return stack(parts["confirmed"]), stack(parts["false_alarm"])


@torch.no_grad()
def feedback_objective(model: torch.nn.Module, confirmed: np.ndarray, false_alarms: np.ndarray, normal: np.ndarray,
                       weights: torch.Tensor, margin: float) -> float:
    """The verdicts' margin term over all their windows (eval mode; early stopping)."""
    from models.label_objective import feedback_margin_loss

    model.eval()
    ref = torch.from_numpy(normal[:512])
    return float(feedback_margin_loss(model, torch.from_numpy(confirmed), torch.from_numpy(false_alarms), ref,
                                      weights, margin))


def _verdict_scores(session: TorchSession, values: np.ndarray, timestamps: np.ndarray, cal: int, T: int,
                    settings: dict[str, float], windows: list[LabelledWindow]) -> list[tuple[bool, float, bool]]:
    """Per verdict: (the alert decision fires on its rows, their highest score, matched in
    the data). Verdicts whose rows are in the data are scored there (one pass); others are
    scored after the data's calibration rows."""
    index = {float(t): i for i, t in enumerate(timestamps)}
    whole = None
    out = []
    for w in windows:
        rows = _rows_of(w, index)
        if rows:
            if whole is None:
                whole = score_recording(values, session, T, calibration_rows=cal, settings=settings, with_pca=False)
            alert, score = whole.alert[rows], whole.score[rows]
        else:
            seq = np.concatenate([values[:cal], w.values])
            scored = score_recording(seq, session, T, calibration_rows=cal, settings=settings, with_pca=False)
            first = cal + max(w.raise_row, T - 1)
            alert, score = scored.alert[first:], scored.score[first:]
        top = float(np.nanmax(score)) if len(score) and np.isfinite(score).any() else 0.0
        out.append((bool(np.any(alert)), top, bool(rows)))
    return out


def feedback_gate(base: torch.nn.Module, adapted: torch.nn.Module, values: np.ndarray, timestamps: np.ndarray,
                  cal: int, labelled: LabelledSet, T: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """Score every verdict's readings with the base and the adapter (the scorer calibrated
    on the data's first ``cal`` rows, as the validation gate does); see the module docstring."""
    settings = settings_from(manifest)
    usable = [w for w in labelled.windows if len(w.values) >= 1]
    b = _verdict_scores(TorchSession(base), values, timestamps, cal, T, settings, usable)
    a = _verdict_scores(TorchSession(adapted), values, timestamps, cal, T, settings, usable)
    verdicts, reasons = [], []
    for w, (bf, bs, matched), (af, ad, _) in zip(usable, b, a):
        verdicts.append({"key": w.key, "label": w.label, "device_id": w.device_id, "rows": len(w.values),
                         "matched_in_data": matched, "base": {"fires": bf, "max_score": round(bs, 4)},
                         "adapter": {"fires": af, "max_score": round(ad, 4)}})
        if w.label == "false_alarm" and af:
            reasons.append(f"still fires on alert {w.key} marked a false alarm (score {ad:.2f}, base {bs:.2f}, "
                           f"threshold {settings['raise']:g})")
        if w.label == "confirmed" and bf and not af:
            reasons.append(f"no longer fires on alert {w.key} marked confirmed (score {ad:.2f}, base {bs:.2f})")
    return {"calibration_rows": cal, "verdicts": verdicts, "passed": not reasons, "reasons": reasons}

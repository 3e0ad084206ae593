"""The supervised term of site fine-tuning: labelled-anomalous windows must score above normal ones.

Used by :func:`models.finetune.finetune` when the training part of a site's data has
labelled anomalous rows (torch; ``[train]`` extra). The term mirrors the gateway's window
score (``models.scoring.scorer``) so that what it teaches the adapter is what the daemon
thresholds, and the daemon needs no new code or file to use it (the adapter stays plain
LoRA weights):

- the recency-weighted residual per channel ``r_c`` (weights ``2 ** (-age / halflife)``),
  compared with a high quantile ``q_c`` of the same statistic over normal windows of the
  same batch;
- the embedding's distance from the normal windows' mean, per dimension divided by their
  variance (a diagonal stand-in for the scorer's Mahalanobis distance over all channels),
  compared with its high quantile over the normal windows.

A window's training score is ``s = max(max_c log(r_c / q_c), log(d / q_d))`` (the scorer's
max of ratios, in logs) and the loss is ``mean(relu(log(margin) - s))`` over windows whose
*last* row is labelled anomalous (the window ending at row t scores row t, as in
``models.evaluate``). Labels are per row and do not say which channel is faulty; the max
over channels lets the adapter raise whichever statistic it can. Normal reference windows
have no labelled row at all.
"""

from __future__ import annotations

import numpy as np
import torch

from models.scoring.scorer import WindowScorer

DEFAULT_MARGIN = 2.0
"""Anomalous windows are pushed to ``margin`` x the normal windows' ``quantile``; the
daemon alerts at about 1.5 x its calibration's 99.5 % quantile."""
DEFAULT_QUANTILE = 0.99


def device_windows(z: np.ndarray, anomalous: np.ndarray, missing: np.ndarray, T: int,
                   limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Whole-device windows ``[M, T, C]`` of ``z [L, C]``: (windows ending on a labelled row,
    windows touching no labelled row), each at most ``limit`` (sampled in time order) and
    with at most a quarter of their values missing. Labelled windows the scorer's
    flatline check already flags are left out (:func:`flagged_by_flatness`)."""
    L, C = z.shape
    empty = np.zeros((0, T, C), np.float32)
    if L < T:
        return empty, empty
    starts = np.arange(0, L - T + 1)
    bad = np.concatenate([[0], np.cumsum(anomalous)])
    miss = np.concatenate([[0], np.cumsum(missing.sum(axis=1))])
    usable = (miss[starts + T] - miss[starts]) <= (T * C) // 4
    ends_anomalous = anomalous[starts + T - 1] & usable
    clean = ((bad[starts + T] - bad[starts]) == 0) & usable

    def take(mask: np.ndarray) -> np.ndarray:
        chosen = starts[mask]
        if len(chosen) > limit:
            chosen = chosen[np.sort(rng.choice(len(chosen), size=limit, replace=False))]
        if not len(chosen):
            return empty
        return z[chosen[:, None] + np.arange(T)[None, :]].astype(np.float32)

    anomalous_windows, normal_windows = take(ends_anomalous), take(clean)
    if len(anomalous_windows) and len(normal_windows):
        anomalous_windows = anomalous_windows[~flagged_by_flatness(anomalous_windows, normal_windows)]
    return anomalous_windows, normal_windows


def flagged_by_flatness(anomalous: np.ndarray, normal: np.ndarray, quantile: float = 0.995,
                        margin: float = 1.5) -> np.ndarray:
    """``[Na]`` True where a window already exceeds the scorer's flatline threshold
    (``max(quantile x margin, 0.5)`` of the normal windows) in some channel: a stuck
    sensor is caught by that statistic, which the model cannot change, and pushing its
    reconstruction error up would fight the reconstruction of normal flat stretches."""
    flatness = WindowScorer.flatness
    threshold = np.maximum(np.quantile(flatness(normal), quantile, axis=0) * margin, 0.5)
    return np.asarray((flatness(anomalous) > threshold).any(axis=1))


def recency_weights(T: int, halflife: float) -> torch.Tensor:
    """The scorer's residual weights over a window's steps (newest heaviest), summing to 1."""
    age = torch.arange(T - 1, -1, -1, dtype=torch.float32)
    w = 2.0 ** (-age / halflife)
    return w / w.sum()


def window_statistics(model: torch.nn.Module, x: torch.Tensor,
                      weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [N, T, C]`` -> (recency-weighted squared residual ``[N, C]``, embedding ``[N, C, D]``)."""
    rec, emb = model(x)
    return torch.einsum("ntc,t->nc", (rec - x) ** 2, weights), emb


def window_log_scores(model: torch.nn.Module, windows: torch.Tensor, normal: torch.Tensor, weights: torch.Tensor,
                      quantile: float = DEFAULT_QUANTILE) -> torch.Tensor:
    """``[N]``: each window's log score ratio ``s`` against ``normal [Nn, T, C]`` (see the
    module docstring); 0 is the normal windows' ``quantile``."""
    x = torch.cat([windows, normal])
    r, emb = window_statistics(model, x, weights)
    na = len(windows)
    r_a, r_n = r[:na], r[na:]
    e = emb.flatten(1)
    e_a, e_n = e[:na], e[na:]
    mu = e_n.mean(0).detach()
    var = e_n.var(0).detach() + 1e-6
    d_a = ((e_a - mu) ** 2 / var).mean(1)
    d_n = ((e_n - mu) ** 2 / var).mean(1)
    q_r = torch.quantile(r_n, quantile, dim=0) + 1e-6  # [C]
    q_d = torch.quantile(d_n, quantile) + 1e-6
    s_res = torch.log(r_a + 1e-9).sub(torch.log(q_r)).max(dim=1).values
    s_dist = torch.log(d_a + 1e-9) - torch.log(q_d)
    return torch.maximum(s_res, s_dist)


def label_margin_loss(model: torch.nn.Module, anomalous: torch.Tensor, normal: torch.Tensor,
                      weights: torch.Tensor, margin: float = DEFAULT_MARGIN,
                      quantile: float = DEFAULT_QUANTILE) -> torch.Tensor:
    """``mean(relu(log(margin) - s))`` over ``anomalous [Na, T, C]``, with ``s`` the window's
    log score ratio against ``normal [Nn, T, C]`` (see the module docstring)."""
    s = window_log_scores(model, anomalous, normal, weights, quantile)
    return torch.relu(float(np.log(margin)) - s).mean()


def feedback_margin_loss(model: torch.nn.Module, confirmed: torch.Tensor, false_alarms: torch.Tensor,
                         normal: torch.Tensor, weights: torch.Tensor, margin: float = DEFAULT_MARGIN,
                         quantile: float = DEFAULT_QUANTILE) -> torch.Tensor:
    """The operators' verdicts as a margin term: windows of alerts marked ``confirmed`` are
    pushed above ``margin`` x the normal windows' ``quantile`` (as labelled rows are), windows
    of alerts marked false alarms below that quantile divided by ``margin``: the adapter is
    taught that what the operator called normal scores like normal, with room to spare (the
    daemon's own thresholds are fitted on other windows than these). Either set may be empty."""
    s = window_log_scores(model, torch.cat([confirmed, false_alarms]), normal, weights, quantile)
    nc = len(confirmed)
    loss = torch.zeros(())
    if nc:
        loss = loss + torch.relu(float(np.log(margin)) - s[:nc]).mean()
    if len(false_alarms):
        loss = loss + torch.relu(s[nc:] + float(np.log(margin))).mean()
    return loss

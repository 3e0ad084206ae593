"""PNG evaluation report (matplotlib, part of the ``[train]`` extra).

Three panels: the signal (standardised channels) with labelled rows shaded and the
model's and PCA baseline's alert rows marked; both scores over time with the alert
threshold; the score distributions on normal vs anomalous rows.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from models.datasets import SeriesTable
from models.evaluate import RecordingScores, fill_missing

MAX_PLOTTED_CHANNELS = 4


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def write_report(path: str | Path, table: SeriesTable, labels: np.ndarray, scores: RecordingScores, title: str) -> None:
    """Write the report PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = fill_missing(table.values)
    ref = x[: scores.calibration_rows]
    z = (x - ref.mean(axis=0)) / np.where(ref.std(axis=0) > 1e-9, ref.std(axis=0), 1.0)
    idx = np.arange(len(table))
    fig, axes = plt.subplots(3, 1, figsize=(13, 9), gridspec_kw={"height_ratios": [3, 2, 2]})
    axes[1].sharex(axes[0])
    ax = axes[0]
    for c in range(min(z.shape[1], MAX_PLOTTED_CHANNELS)):
        ax.plot(idx, z[:, c], lw=0.6, label=table.channels[c])
    for s, e in _spans(labels):
        ax.axvspan(s, e, color="red", alpha=0.15, lw=0)
    lo = float(np.nanmin(z[:, :MAX_PLOTTED_CHANNELS]))
    ax.plot(idx[scores.alert], np.full(int(scores.alert.sum()), lo - 0.5), "|", color="tab:red", ms=6, label="model alert")
    ax.plot(idx[scores.pca_alert], np.full(int(scores.pca_alert.sum()), lo - 1.2), "|", color="tab:gray", ms=6, label="PCA alert")
    ax.axvline(scores.calibration_rows, color="k", ls="--", lw=0.8)
    ax.set_title(f"{title} (shaded: labelled anomalous rows; dashed: end of calibration)")
    ax.set_ylabel("standardised value")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax = axes[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ax.semilogy(idx, np.maximum(scores.score, 1e-3), lw=0.6, label="model score")
        ax.semilogy(idx, np.maximum(scores.pca_score, 1e-3), lw=0.6, alpha=0.7, label="PCA score")
    ax.axhline(1.0, color="tab:red", ls="--", lw=0.8, label="threshold")
    for s, e in _spans(labels):
        ax.axvspan(s, e, color="red", alpha=0.15, lw=0)
    ax.set_ylabel("score (1 = threshold)")
    ax.set_xlabel("row")
    ax.legend(loc="upper left", fontsize=7)
    ax = axes[2]
    ev = scores.evaluated & np.isfinite(scores.score)
    bins = np.logspace(-3, 3, 60)
    for name, sc in (("model", scores.score), ("PCA", scores.pca_score)):
        for lab, style in ((False, "-"), (True, "--")):
            sel = ev & (labels == lab)
            if sel.any():
                ax.hist(np.clip(sc[sel], 1e-3, 1e3), bins=bins, histtype="step", ls=style, density=True,
                        label=f"{name}, {'anomalous' if lab else 'normal'} rows")
    ax.set_xscale("log")
    ax.axvline(1.0, color="tab:red", ls="--", lw=0.8)
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

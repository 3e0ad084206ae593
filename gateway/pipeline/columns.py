"""Array work over a whole batch of due windows (the columnar core, issue 15).

``apply_follows``: each device's standardisation level follows it at a bounded rate
(models.scoring.level). The per-reading path fed the tracker one window at a time (a numpy
median per reading, the largest single cost of the score stage). The chunk path only marks
the windows (``DueWindow.follow``); before a batch is standardised, this computes every
marked window's level in one median over ``[K, T, C]`` and steps the trackers a round at a
time (round r: the r-th marked window of each device in the batch, so a device's windows
still move its level in time order), with the same float64 arithmetic as
``LevelTracker.update``. Since the batcher always hands over everything pending, the
levels a batch is standardised with are exactly those the per-reading path had set: the
follows of every reading handled so far (``tests/test_columnar_equal.py``).

``ScoredGroup``: one ONNX Runtime call's results as columns (scores, top channel,
per-channel contributions); ``details(i)`` builds the per-window dict the alert policy and
the score observers take, only for the windows that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gateway.pipeline.inference import DueWindow


def apply_follows(due: Sequence[DueWindow]) -> int:
    """Step the level trackers for the windows marked ``follow`` (in order), then set each
    moved device's standardisation level (``norm[0]``). Returns how many were applied."""
    marked = [d for d in due if d.follow]
    if not marked:
        return 0
    by_c: dict[int, list[DueWindow]] = {}
    for d in marked:
        d.follow = False
        by_c.setdefault(d.raw.shape[1], []).append(d)
    moved: dict[int, Any] = {}
    for group in by_c.values():
        raw = np.stack([d.raw for d in group])  # [K, T, C] float32
        norms = np.stack([d.state.norm for d in group])  # type: ignore[misc]  # [K, 3, C] float64
        levels = np.median((raw - norms[:, 2, None, :]) / norms[:, 1, None, :], axis=1)  # [K, C]
        rounds: list[list[int]] = []
        seen: dict[int, int] = {}
        for j, d in enumerate(group):
            r = seen.get(id(d.state), 0)
            seen[id(d.state)] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(j)
        for members in rounds:
            trackers = [group[j].state.level for j in members]
            offset = np.stack([t.offset for t in trackers])  # type: ignore[union-attr]
            step = np.array([t.step for t in trackers])[:, None]  # type: ignore[union-attr]
            row = levels[members]
            move = np.minimum(np.maximum(row - offset, -step), step)
            new = offset + np.where(np.isfinite(row), move, 0.0)
            for j, tracker, o in zip(members, trackers, new):
                tracker.offset = o.copy()  # type: ignore[union-attr]
                moved[id(group[j].state)] = group[j].state
    for st in moved.values():
        norm = st.norm
        norm[0] = norm[2] + st.level.offset * norm[1]
    return len(marked)


@dataclass(slots=True)
class ScoredGroup:
    """Scored windows of one model call (only those with a finite score), as columns."""

    due: list[DueWindow]
    scores: list[float]
    tops: list[int]  # index of the top channel per window
    contributions: np.ndarray  # [n, C] per-channel scores
    adapter: str | None

    def details(self, i: int) -> dict[str, Any]:
        """The details dict of window ``i`` (what ``InferenceEngine.score`` returns)."""
        channels = self.due[i].window.channels
        return {
            "channel": channels[self.tops[i]],
            "channel_scores": {c: round(v, 3) for c, v in zip(channels, self.contributions[i].tolist())},
            "adapter": self.adapter,
        }

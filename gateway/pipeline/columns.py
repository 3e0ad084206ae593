"""Array work over a whole batch of due windows (the columnar core, issue 15).

``apply_follows``: each device's standardisation level follows it at a bounded rate
(models.scoring.level). The per-reading path fed the tracker one window at a time (a numpy
median per reading, the largest single cost of the score stage). The chunk path only marks
the windows (``DueWindow.follow``); before a batch is standardised, this computes every
marked window's level in one median over ``[K, T, C]`` and steps the trackers a round at a
time (round r: the r-th marked window of each device in the batch, so a device's windows
still move its level in time order), with the same float64 arithmetic as
``LevelTracker.update`` (held channels, ``level_hold``, do not move). Each window keeps the
level its own round set (``DueWindow.level``) and is standardised with it, exactly as the
per-reading path standardises a window with the level its reading's step left
(``tests/test_columnar_equal.py``), whatever later readings of the device share the batch.

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


def device_rounds(due: list[DueWindow]) -> list[list[DueWindow]]:
    """Split a batch into rounds, each device at most once per round, in order: round r
    holds the r-th window of every device that has one (``[due]`` itself when no device
    repeats, the usual case with many devices)."""
    seen: dict[str, int] = {}
    rounds: list[list[DueWindow]] = [[]]
    repeat = False
    for d in due:
        key = d.window.device_id
        r = seen.get(key, 0)
        seen[key] = r + 1
        if r:
            repeat = True
            if r == len(rounds):
                rounds.append([])
        rounds[r].append(d)
    return rounds if repeat else [due]


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
    for group in by_c.values():
        states = [d.state for d in group]
        raw = np.stack([d.raw for d in group])  # [K, T, C] float32
        norms = np.stack([st.norm for st in states])  # type: ignore[misc]  # [K, 3, C] float64
        levels = np.median((raw - norms[:, 2, None, :]) / norms[:, 1, None, :], axis=1)  # [K, C]
        rounds: list[list[int]] = []
        seen: dict[int, int] = {}
        for j, st in enumerate(states):
            r = seen.get(id(st), 0)
            seen[id(st)] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(j)
        for members in rounds:  # usually one: each device once in the batch
            sts = states if len(members) == len(states) else [states[j] for j in members]
            trackers = [st.level for st in sts]
            offset = np.stack([t.offset for t in trackers])  # type: ignore[union-attr]
            step = np.array([t.step for t in trackers])[:, None]  # type: ignore[union-attr]
            holds = np.stack([t.hold for t in trackers])  # type: ignore[union-attr]  # level_hold: held channels stay
            if holds.any():
                step = np.where(holds, 0.0, step)
            row = levels if len(members) == len(states) else levels[members]
            move = np.minimum(np.maximum(row - offset, -step), step)
            new = offset + np.where(np.isfinite(row), move, 0.0)
            sub = norms if len(members) == len(states) else norms[members]
            level = sub[:, 2] + new * sub[:, 1]  # what each device is standardised with now
            for j, st, tracker, o, lv in zip(members, sts, trackers, new, level):
                tracker.offset = o.copy()  # type: ignore[union-attr]
                st.norm[0] = lv  # type: ignore[index]  # a later round of the same device overwrites it
                group[j].level = lv  # the window is standardised with its own reading's level
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

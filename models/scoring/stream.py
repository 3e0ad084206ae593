"""One device's recording scored window by window exactly as the daemon scores it, with
batched model calls (numpy only; ``model score``/``eval`` through models.evaluate).

The daemon (gateway.pipeline.inference) scores each window of a device before the next
one (its batches run in device rounds): a window's score sets the level hold
(``level_hold``, models.scoring.level) that the next reading's level step obeys, and the
profile's adaptation (``WindowScorer._adapt``: ``adapt_rate``, ``adapt_below``,
``adapt_calm``) that the next window's distance is measured against. So each window
depends on every score before it. Scoring one window per model call would copy that at
about 30x the cost; scoring blocks of windows with one state per block (what ``model
score`` did until bench/RESULTS.md 26) changed the figures while a device sat at the
threshold. Here the blocks are speculative and checked:

- *Model inputs.* A block's level steps are taken with the hold as it stands; the model
  runs once over the block. The hold only changes where a score crosses ``level_hold`` or
  the held channels change, so scoring the block sequentially (below) finds the first
  window after which the hold differs: the windows up to it are kept, the rest of the block
  is standardised again from there and re-run (blocks shrink to ``MIN_BLOCK`` after such a
  break and double while none comes, up to ``MAX_BLOCK``).
- *Scores.* Given the model outputs, a window's score depends on the state before it only
  through the profile mean and the calm count, which change by one adaptation step per
  window, decided by whether the window scored below ``adapt_below`` (its *gate*). Each
  pass guesses every gate (first: all calm; then the previous pass's scores), builds the
  state before each window by the scorer's own ``_adapt`` under those guesses, and scores
  all windows at once in one ``score_details`` call with one state per window. Up to and
  including the first window whose real gate differs from the guess, every window saw the
  state the daemon's would have; the next pass starts after it. Usually one pass covers a
  block, two around an excursion.

Every window thus goes through the same arithmetic as in the daemon (the same level steps,
the same standardisation expression, the scorer's own ``score_details`` and ``_adapt``),
and ONNX Runtime's CPU outputs do not depend on the batch (bench/RESULTS.md 23), so the
scores equal the daemon's (tests/test_offline_equals_daemon.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from models.scoring.level import LevelTracker
from models.scoring.scorer import DeviceScoreState, WindowScorer

MIN_BLOCK = 16
MAX_BLOCK = 512

RunModel = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def _clone(st: DeviceScoreState) -> DeviceScoreState:
    """A copy of a calibrated state whose profile (and so its mean) can change alone."""
    out = object.__new__(DeviceScoreState)
    for name in DeviceScoreState.__slots__:  # type: ignore[attr-defined]
        if not name.startswith("__"):
            object.__setattr__(out, name, getattr(st, name))
    if st.profile is not None:
        out.profile = st.profile.copy()
    return out


def _gate(scores: np.ndarray, below: float) -> np.ndarray:
    """0: unscored (NaN: the state is left as it is), 1: feeds the calm count, 2: resets it."""
    return np.where(np.isnan(scores), 0, np.where(scores < below, 1, 2))


def _score_sequence(scorer: WindowScorer, state: DeviceScoreState, x: np.ndarray, outputs: Mapping[str, np.ndarray],
                    stop: Callable[[int, float, np.ndarray], bool]) -> tuple[int, np.ndarray, np.ndarray, DeviceScoreState]:
    """Score ``x [n, T, C]`` (model ``outputs``) in order from ``state``, each window against
    the state all earlier ones left. ``stop(i, score, channel_scores)`` is asked for each
    window in order; the first True ends the sequence after that window. Returns how many
    windows were scored, their scores ``[k]`` and channel scores ``[k, C]``, and the state
    after the last of them."""
    n = x.shape[0]
    below = scorer.settings["adapt_below"]
    emb = np.asarray(outputs["embedding"], dtype=np.float32)
    flat = emb.reshape(n, -1)
    scores = np.empty(n, dtype=np.float32)
    channel_scores = np.empty((n, x.shape[2]), dtype=np.float32)
    guess = np.zeros(n, dtype=np.float32)  # first guess: every window calm
    start = 0
    while start < n:
        run = _clone(state)
        pres: list[DeviceScoreState] = []
        for i in range(start, n):
            pres.append(_clone(run))
            if i + 1 < n and not np.isnan(guess[i]):  # the next window's state under this guess
                scorer._adapt([run], flat[i : i + 1], guess[i : i + 1])
        res = scorer.score_details(x[start:], {k: v[start:] for k, v in outputs.items()}, pres)
        wrong = np.flatnonzero(_gate(res.score, below) != _gate(guess[start:], below))
        last = n - 1 if wrong.size == 0 else start + int(wrong[0])  # the states up to here were right
        for i in range(start, last + 1):
            j = i - start
            scores[i], channel_scores[i] = res.score[j], res.channel_scores[j]
            if stop(i, float(res.score[j]), res.channel_scores[j]):
                return i + 1, scores[: i + 1], channel_scores[: i + 1], pres[j]
        state = pres[last - start]  # after the window scoring applied the real adaptation
        guess[last + 1 :] = res.score[last + 1 - start :]
        start = last + 1
    return n, scores, channel_scores, state


def score_stream(raw: np.ndarray, first: int, mean: np.ndarray, std: np.ndarray, scorer: WindowScorer,
                 state: DeviceScoreState, tracker: LevelTracker | None, run: RunModel,
                 window_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Score the windows of ``raw [L, C]`` (float32 physical readings, no gaps) ending at rows
    ``first .. L-1`` as the daemon scores them after its calibration froze at row ``first``:
    that window with the frozen ``mean`` (float64 ``[C]``), each later one after its own
    reading's level step (``tracker``, None: no level following), all standardised by the
    frozen ``std``. ``state``: the calibrated score state; ``state`` and ``tracker`` are
    left as the daemon's would be after the last window. Returns ``score [L - first]`` and
    ``channel_scores [L - first, C]``."""
    t = window_length
    n_rows, c = raw.shape
    m = n_rows - first
    windows = np.lib.stride_tricks.sliding_window_view(raw, t, axis=0)[first - t + 1 :]  # [m, C, T] float32
    z = (raw.astype(np.float64) - mean) / std  # what the daemon's level step takes the median of
    levels = np.lib.stride_tricks.sliding_window_view(z, t, axis=0)[first - t + 1 :]  # [m, C, T]
    hold_at = scorer.settings["level_hold"]
    score = np.full(m, np.nan, dtype=np.float32)
    channel_scores = np.full((m, c), np.nan, dtype=np.float32)
    pos, block = 0, MIN_BLOCK
    while pos < m:
        n = min(block, m - pos)
        level = np.broadcast_to(mean, (n, c)).copy()
        lo = max(pos, 1)  # the first window (row ``first``) takes no level step
        offsets = None
        if tracker is not None and lo < pos + n:  # the block's level steps, with the hold as it stands
            trial = LevelTracker(c, 1, 0.0)
            trial.offset, trial.step, trial.hold = tracker.offset, tracker.step, tracker.hold
            offsets = trial.update(np.median(levels[lo : pos + n], axis=-1))
            level[lo - pos :] = mean + offsets * std
        x = ((windows[pos : pos + n].transpose(0, 2, 1).astype(np.float64) - level[:, None, :]) / std).astype(np.float32)
        hold = None if tracker is None else tracker.hold.copy()

        def hold_changes(i: int, s: float, cs: np.ndarray, n: int = n, hold: np.ndarray | None = hold) -> bool:
            """The hold after window ``i`` of the block differs from the one its steps assumed."""
            if hold is None or i + 1 >= n:
                return False
            probe = LevelTracker(c, 1, 0.0)
            probe.hold = hold
            probe.hold_from(s, cs, hold_at)
            return not np.array_equal(probe.hold, hold)

        k, s, cs, after = _score_sequence(scorer, state, x, run(x), hold_changes)
        score[pos : pos + k], channel_scores[pos : pos + k] = s, cs
        state.profile, state.calm = after.profile, after.calm
        if tracker is not None:
            if offsets is not None and pos + k - 1 >= lo:
                tracker.offset = offsets[pos + k - 1 - lo].copy()
            tracker.hold_from(float(s[-1]), cs[-1], hold_at)  # the windows before it left the hold as it was
        block = min(2 * block, MAX_BLOCK) if k == n else MIN_BLOCK
        pos += k
    return score, channel_scores


"""One device's recording scored window by window exactly as the daemon scores it, with
batched model calls (numpy only; ``model score``/``eval`` through models.evaluate).

The daemon (gateway.pipeline.inference) scores each window of a device before the next
one (its batches run in device rounds): a window's score sets the level hold
(``level_hold``, models.scoring.level) that the next reading's level step obeys, and the
profile's adaptation (``WindowScorer._adapt``: ``adapt_rate``, ``adapt_below``,
``adapt_calm``) that the next window's distance is measured against. So each window
depends on every score before it. Scoring one window per model call would copy that at
the cost of a model call and a ``score_details`` call per window; scoring blocks of windows
with one state per block (what ``model score`` did until bench/RESULTS.md 26) changed the
figures while a device sat at the threshold. Here the blocks are speculative and checked:

- *Model inputs.* A block's level steps assume a hold for each window: the one in force,
  or, after a block was cut at a change of hold, the holds that the cut block's remaining
  scores predict (their inputs differ only by the held channels' bounded level steps). The
  model runs once over the block. Scoring it in order (below) finds the first window after
  which the real hold differs from what the next window assumed: the windows up to it are
  kept, the rest is standardised again and re-run (the next block starts at ``MIN_BLOCK``
  windows and doubles while no cut comes, up to ``MAX_BLOCK``).
- *Scores.* Given the model outputs, a window's score depends on the state before it only
  through the profile mean and the calm count (``_adapt``). Each pass guesses the state
  before every window (first: every window calm; then the previous pass's scores) and
  scores them all in one ``score_details`` call, one state copy per window, whose own
  ``_adapt`` then moves each copy as the daemon's state would move after that window. Up
  to and including the first window whose copy did not end where the guess for the next
  window began, every window saw the daemon's state; the next pass starts after it.
  Usually one pass covers a block. A guess that is wrong only costs a pass, never a
  wrong score.

Every window thus goes through the same arithmetic as in the daemon (the same level steps,
the same standardisation expression, the scorer's own ``score_details`` and ``_adapt``), a
window's ``score_details`` row does not depend on the others in the call, and ONNX Runtime's
CPU outputs do not depend on the batch (bench/RESULTS.md 23), so the scores equal the
daemon's bit for bit (tests/test_offline_equals_daemon.py). With another runtime (the
PyTorch session of ``model finetune``'s gate) they are equal up to its batch rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from models.scoring.level import LevelTracker
from models.scoring.scorer import DeviceScoreState, WindowScorer

MIN_BLOCK = 16
MAX_BLOCK = 512

RunModel = Callable[[np.ndarray], Mapping[str, np.ndarray]]


_SLOTS = tuple(n for n in DeviceScoreState.__slots__ if not n.startswith("__"))


def _proxies(state: DeviceScoreState, n: int) -> tuple[np.ndarray, list[DeviceScoreState]]:
    """``n`` copies of a calibrated state, each with its own row of ``profiles [n, P]`` (so
    each window can be scored against its own profile mean in one call). Only the mean
    (``profiles[:, :F]``) and ``calm`` ever change in them."""
    assert state.profile is not None
    profiles = np.repeat(state.profile[None], n, axis=0)
    values = [(name, getattr(state, name)) for name in _SLOTS if name != "profile"]
    out = []
    for row in profiles:
        p = object.__new__(DeviceScoreState)
        for name, v in values:
            object.__setattr__(p, name, v)
        p.profile = row
        out.append(p)
    return profiles, out


def _guess_states(settings: Mapping[str, float], mu: np.ndarray, calm: int, flat: np.ndarray,
                  guess: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The profile mean ``[k, F]`` and calm count ``[k]`` before each window if the windows
    scored ``guess [k]``: the arithmetic of ``WindowScorer._adapt`` for one window at a time.
    Only a guess: ``_score_sequence`` checks it against what ``score_details`` really did."""
    rate, below, need = settings["adapt_rate"], settings["adapt_below"], int(settings["adapt_calm"])
    weight = 1.0 - (1.0 - rate) ** 1
    k = len(guess)
    mus = np.empty((k, mu.size), dtype=np.float32)
    calms = np.empty(k, dtype=np.int64)
    for i, g in enumerate(guess.tolist()):
        mus[i], calms[i] = mu, calm
        if g != g:  # NaN: an unscored window leaves the state as it is
            continue
        ok = g < below
        calm = calm + 1 if ok else 0
        if ok and calm > need and rate > 0.0:
            mu = mu + weight * (flat[i] - mu)  # float32 throughout, as _adapt's
    return mus, calms


def _holds_after(start: np.ndarray, scores: np.ndarray, channel_scores: np.ndarray, hold_at: float) -> list[np.ndarray]:
    """The level hold after each window ``[k]`` (``LevelTracker.hold_from`` in turn from
    ``start``); an unchanged hold is the same array object as the one before it."""
    out: list[np.ndarray] = []
    hold = start
    probe = LevelTracker(start.size, 1, 0.0)
    for s, cs in zip(scores.tolist(), channel_scores):
        # with nothing held, only a window at or over the threshold can hold something
        if hold_at > 0 and (hold.any() or s >= hold_at):
            probe.hold = hold
            probe.hold_from(s, cs, hold_at)
            if not np.array_equal(probe.hold, hold):
                hold = probe.hold
        out.append(hold)
    return out


def _score_sequence(scorer: WindowScorer, state: DeviceScoreState, x: np.ndarray, outputs: Mapping[str, np.ndarray],
                    holds: list[np.ndarray] | None, proxies: tuple[np.ndarray, list[DeviceScoreState]],
                    ) -> tuple[int, np.ndarray, np.ndarray]:
    """Score ``x [n, T, C]`` (model ``outputs``) in order, each window against the state all
    earlier ones left, starting from ``state`` (updated to the state after the last window
    scored). ``holds[j]``: the level hold window j's level step assumed (None: no level
    tracker); scoring stops after the first window that leaves another hold than the next
    one assumed. ``proxies``: ``_proxies(state, >= n)`` (reused block after block).
    Returns how many windows were scored, and the scores ``[n]`` and channel scores
    ``[n, C]`` of all: exact for those, a prediction for the rest."""
    n = x.shape[0]
    hold_at = scorer.settings["level_hold"]
    flat = np.asarray(outputs["embedding"], dtype=np.float32).reshape(n, -1)
    f = state.dim
    profiles, proxies_n = proxies[0][:n], proxies[1][:n]
    scores = np.empty(n, dtype=np.float32)
    channel_scores = np.empty((n, x.shape[2]), dtype=np.float32)
    guess = np.zeros(n, dtype=np.float32)  # first guess: every window calm
    assert state.mu is not None
    mu, calm = state.mu.copy(), state.calm
    start = 0
    while start < n:
        mus, calms = _guess_states(scorer.settings, mu, calm, flat[start:], guess[start:])
        profiles[start:, :f] = mus
        for p, c in zip(proxies_n[start:], calms.tolist()):
            p.calm = c
        res = scorer.score_details(x[start:], {k: v[start:] for k, v in outputs.items()}, proxies_n[start:])
        scores[start:], channel_scores[start:] = res.score, res.channel_scores
        # window i's state was right if every earlier window left the state the guess gave the next
        after = profiles[start:, :f]  # score_details adapted each proxy's own row
        same = np.all(after[:-1] == mus[1:], axis=1) & (np.array([p.calm for p in proxies_n[start:-1]]) == calms[1:])
        wrong = np.flatnonzero(~same)
        last = n - 1 if wrong.size == 0 else start + int(wrong[0])
        stop = False
        if holds is not None:
            left = _holds_after(holds[start], res.score[: last + 1 - start], res.channel_scores[: last + 1 - start],
                                hold_at)
            for j, h in enumerate(left):
                if start + j + 1 < n and not np.array_equal(h, holds[start + j + 1]):
                    last, stop = start + j, True  # the next window's level step assumed another hold
                    break
        mu, calm = profiles[last, :f].copy(), proxies_n[last].calm
        guess[last + 1 :] = res.score[last + 1 - start :]
        start = last + 1
        if stop:
            break
    state.mu, state.calm = mu, calm
    return start, scores, channel_scores


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
    proxies = _proxies(state, min(MAX_BLOCK, m))
    predicted: tuple[np.ndarray, np.ndarray] | None = None  # scores of the windows after a cut, from its pass
    while pos < m:
        n = min(block, m - pos)
        level = np.broadcast_to(mean, (n, c)).copy()
        holds: list[np.ndarray] | None = None
        if tracker is not None:
            # the hold each window's level step will find: the one in force, or where the
            # last block was cut at a change of hold, the holds its other scores predict
            holds = [tracker.hold] * n
            if predicted is not None and n > 1:
                p_s, p_cs = predicted[0][: n - 1], predicted[1][: n - 1]
                after = _holds_after(tracker.hold, p_s, p_cs, hold_at)
                for j in range(1, n):
                    holds[j] = after[min(j, len(after)) - 1] if after else holds[j]
            lo = max(pos, 1)  # the first window (row ``first``) takes no level step
            offsets = np.empty((pos + n - lo, c))
            trial = LevelTracker(c, 1, 0.0)
            trial.offset, trial.step = tracker.offset, tracker.step
            j = lo
            while j < pos + n:  # runs of windows that assume the same hold
                e = j + 1
                while e < pos + n and holds[e - pos] is holds[j - pos]:
                    e += 1
                trial.hold = holds[j - pos]
                offsets[j - lo : e - lo] = trial.update(np.median(levels[j:e], axis=-1))
                j = e
            level[lo - pos :] = mean + offsets * std
        x = ((windows[pos : pos + n].transpose(0, 2, 1).astype(np.float64) - level[:, None, :]) / std).astype(np.float32)
        k, s, cs = _score_sequence(scorer, state, x, run(x), holds, proxies)
        score[pos : pos + k], channel_scores[pos : pos + k] = s[:k], cs[:k]
        if tracker is not None and holds is not None:
            if pos + k - 1 >= lo:
                tracker.offset = offsets[pos + k - 1 - lo].copy()
            tracker.hold = _holds_after(holds[k - 1], s[k - 1 : k], cs[k - 1 : k], hold_at)[0].copy()
        predicted = (s[k:], cs[k:]) if k < n else None
        block = min(2 * block, MAX_BLOCK) if k == n else MIN_BLOCK
        pos += k
    return score, channel_scores

"""Window scores that remember normal (numpy only; the daemon calls this for every batch).

The sequence for one device (``docs/model-contract.md`` has the whole contract):

1. ``SeriesCalibration``: the device's first ``calibration_steps`` readings give each
   channel's mean and std (Welford), then the calibration freezes. Every window the model
   sees is standardised with these frozen values (``standardize``), never per window, so a
   sustained level shift stays visible as a level.
2. The model (ONNX) maps standardised windows ``[N, T, C]`` to ``reconstruction [N, T, C]``
   and ``embedding [N, C, D]``.
3. Score calibration, once per device, the moment step 1 froze (preferred):
   ``windows = cal.calibration_windows(T)`` (the calibration readings, kept until then),
   run the model on them, ``scorer.calibrate_windows(state, windows, outputs)``, then
   ``cal.release()``. This fits the normal profile (mean and shrunk covariance of the
   device's embedding vector) and the high quantiles of both statistics below.
   Fallback: a ``DeviceScoreState`` that was never calibrated collects its first
   ``calibration_windows`` scored windows instead (they score ``NaN``,
   ``state.calibrated`` is False) and then fits on them.
4. ``WindowScorer.score(inputs, outputs, states)`` gives one score per window.

Per window, three statistics:

- residual ``r_c`` per channel: the reconstruction error, weighted towards the newest
  steps (weight ``2 ** (-age / recency_halflife)``), mean of squares;
- flatness ``f_c`` per channel: the fraction of exactly repeated consecutive readings
  (stuck-at sensors reconstruct well; they are caught by this instead);
- distance ``m``: the squared Mahalanobis distance (divided by its dimension) of the
  device's embedding vector (all channels' embeddings, ``C*D`` values) from its
  calibrated normal mean; covariance shrunk towards its scaled identity (``shrinkage``)
  and kept as ``max_rank`` principal directions plus one variance for the rest, or, where
  that is smaller (``C*D + 1 <= 2 * max_rank``, e.g. the bundled model's 1-3 channel
  devices), as the packed lower triangle of the same precision matrix.

Each is divided by its calibrated threshold: the value a normal window exceeds with
probability ``false_alarm_target``, from held-out calibration statistics
(``_target_thresholds``, models.scoring.tail; flatness: at least 0.5), or, with the
target 0, the in-sample ``score_quantile`` x ``score_margin``. Optional, off by default
(``calibration_trim`` 0; models.scoring.trim): windows far out on the high side of the
stretch's own robust spread are dropped before the fit (``calibrate`` returns the count,
the daemon's ``score_trim_windows_total``; docs/models.md has why it is off). The window score is the largest ratio,
``max(max_c r_c / r_thr_c, max_c f_c / f_thr_c, m / m_thr)``, so **1.0 means "at the
alert threshold"**. A sustained shift moves the embedding away from normal for as long
as it lasts, even where the reconstruction follows the new level; the joint distance
also sees a channel leave its usual relation to the others (humidity against
temperature). The profile's mean follows slow normal change (``adapt_rate`` per window)
from windows scoring below ``adapt_below`` (the alert threshold) only.

Scores become raise/clear alert states (models.scoring.decision), alike for the daemon and ``model score``.
Settings live in models.scoring.settings, the readings calibration (step 1) in
models.scoring.calibration, and the PCA baseline ``model eval`` reports in models.pca_baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from models.scoring.cross import cross_features, cross_terms, fit_cross
from models.scoring.profile import fit_profile, profile_distance, profile_shrinkage, rank_k_distance
from models.scoring.settings import settings_from
from models.scoring.state import DeviceScoreState, packed_precision, unpack_index
from models.scoring.tail import fold_slices, tail_quantile, tail_quantile_bound
from models.scoring.trim import calibration_keep

__all__ = ["DeviceScoreState", "ScoreResult", "WindowScorer", "packed_precision"]

_EPS = 1e-9
MAX_FALLBACK_WINDOWS = 256
"""At most this many scored windows are kept by an uncalibrated state (every k-th):
about 256 * (C*D + 2C) * 4 bytes, 147 KiB at C = 8, until it calibrates."""


@dataclass
class ScoreResult:
    """Scores of a batch. ``score [N]``: 1.0 = alert threshold, NaN = uncalibrated state or
    non-finite window. ``channel_scores [N, C]``: per-channel attribution, each channel's
    residual ratio or its share of the distance ratio, whichever is larger (its argmax
    names the channel to blame; ``score == max(channel_scores.max(1), distance_ratio)``).
    ``residual [N, C]`` and ``distance [N]`` are the raw statistics, ``distance_ratio [N]``
    the distance over its threshold. ``trimmed``: calibration windows dropped as anomalous
    by the states whose fallback calibration this batch completed (``calibrate``)."""

    score: np.ndarray
    channel_scores: np.ndarray
    residual: np.ndarray
    distance: np.ndarray
    distance_ratio: np.ndarray
    trimmed: int = 0


class WindowScorer:
    """Scores windows from the model outputs against each device's calibrated normal.

    ``manifest``: a models.manifest.Manifest (or dict) whose ``thresholds`` override
    ``DEFAULTS``; ``overrides`` override both. Thread-compatible: states are per device.
    """

    def __init__(self, manifest: Any = None, **overrides: float) -> None:
        self.settings = settings_from(manifest, **overrides)
        self._weights_cache: dict[int, np.ndarray] = {}

    def new_state(self, n_channels: int) -> DeviceScoreState:
        """A fresh, uncalibrated state for a device with ``n_channels`` channels."""
        return DeviceScoreState(n_channels, max(8, int(self.settings["calibration_windows"])))

    def _weights(self, t: int) -> np.ndarray:
        w = self._weights_cache.get(t)
        if w is None:
            age = np.arange(t - 1, -1, -1, dtype=np.float64)
            w = 2.0 ** (-age / self.settings["recency_halflife"])
            w = (w / w.sum()).astype(np.float32)
            self._weights_cache[t] = w
        return w

    def statistics(self, inputs: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
        """Recency-weighted mean squared residual ``[N, C]``."""
        sq = np.square(reconstruction - inputs, dtype=np.float32)
        return np.einsum("ntc,t->nc", sq, self._weights(inputs.shape[1]))

    @staticmethod
    def flatness(inputs: np.ndarray) -> np.ndarray:
        """Fraction of exactly repeated consecutive readings per channel ``[N, C]`` (1.0 =
        the channel did not change at all in the window: stuck-at, frozen firmware)."""
        return np.asarray(np.mean(np.diff(inputs, axis=1) == 0.0, axis=1, dtype=np.float32))

    def calibrate(
        self,
        state: DeviceScoreState,
        embeddings: np.ndarray,
        residuals: np.ndarray,
        flatness: np.ndarray | None = None,
        gap: int = 32,
        cross: np.ndarray | None = None,
    ) -> int:
        """Fit ``state`` from calibration windows: ``embeddings [M, C, D]``, ``residuals [M, C]``,
        ``flatness [M, C]`` (None: the flatline check is off for this state), ``cross [M, C]``
        (models.scoring.cross features; used with ``cross_channel`` 1 and C >= 2). Returns how many
        windows were dropped as anomalous (``calibration_trim``; see models.scoring.trim.calibration_keep).

        The device's embedding vector is the concatenation of its channels' embeddings
        (``C*D`` values), so the distance sees how channels move together (humidity
        against temperature, vibration with current) as well as each channel's level and
        shape. Covariance: shrunk towards its scaled identity (``shrinkage``), kept as its
        top ``max_rank`` eigen-directions plus one variance for the rest."""
        emb = np.asarray(embeddings, dtype=np.float64)
        res = np.asarray(residuals, dtype=np.float64)
        m, c, d = emb.shape
        if m < 8:
            raise ValueError("need at least 8 calibration windows")
        if c != state.n_channels:
            raise ValueError(f"state has {state.n_channels} channels, calibration windows have {c}")
        flat = emb.reshape(m, c * d)
        keep = calibration_keep(flat, res, self.settings)
        trimmed = int(m - keep.sum())
        if trimmed:
            flat, res, m = flat[keep], res[keep], int(keep.sum())
            flatness = None if flatness is None else np.asarray(flatness)[keep]
            cross = None if cross is None else np.asarray(cross)[keep]
        xfit, xheld = (fit_cross(cross, self.settings, gap) if cross is not None and c >= 2
                       and self.settings["cross_channel"] > 0 else (None, None))
        mu, basis, inv_eig, inv_rest = fit_profile(flat, self.settings)
        f, k = basis.shape
        fl = None if flatness is None else np.asarray(flatness, dtype=np.float64)
        if self.settings["false_alarm_target"] > 0:
            residual_threshold, distance_threshold, cross_threshold = self._target_thresholds(
                flat, res, (mu, basis, inv_eig, inv_rest), gap, xheld)
            flat_threshold = (np.full(c, np.inf, dtype=np.float32) if fl is None
                              else np.maximum(fl.max(axis=0) * 1.5, 0.5).astype(np.float32))
        else:  # legacy: in-sample quantile x margin
            residual_threshold, flat_threshold, distance_threshold = self._quantile_thresholds(
                flat, res, fl, (mu, basis, inv_eig, inv_rest))
            cross_threshold = (float(max(np.quantile(xheld, self.settings["score_quantile"]), 1e-3)
                                     * self.settings["score_margin"]) if xheld is not None else float("nan"))
        if f + 1 <= 2 * k:  # the packed F x F precision is no larger than the low-rank form
            tail = [packed_precision(basis, inv_eig, inv_rest).astype(np.float32)]
            state.rank = 0
        else:
            tail = [basis.astype(np.float32).ravel(), inv_eig.astype(np.float32)]
            state.rank = k
        state.profile = np.concatenate([mu.astype(np.float32), residual_threshold, flat_threshold, *tail])
        state.dim = f
        state.inv_rest = inv_rest
        state.distance_threshold = distance_threshold
        state.cross, state.cross_threshold = xfit, cross_threshold
        state.calibrated, state.calm = True, 0
        state._emb = state._res = state._flat = None
        return trimmed

    def _target_thresholds(
        self, flat: np.ndarray, res: np.ndarray, profile: tuple[np.ndarray, np.ndarray, np.ndarray, float], gap: int,
        cross: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float, float]:
        """Residual ``[C]``, distance and cross-channel (held-out ``cross [M]`` given, else NaN)
        thresholds a normal window exceeds with probability
        ``false_alarm_target`` (models.scoring.tail), from statistics the fit did not see:
        each calibration window's distance to a profile fitted on the other folds
        (``calibration_folds`` contiguous blocks, ``gap`` windows either side left out),
        and the residuals (the model never trained on the device). Each statistic is first
        scaled by its own tail quantile, then both are multiplied by the tail quantile of
        the largest scaled statistic (its upper ``threshold_confidence`` bound), so the
        *window score* (their maximum) meets the target, not each statistic alone. Times
        ``score_margin`` (1.0: none)."""
        m, c = res.shape
        target, margin = self.settings["false_alarm_target"], self.settings["score_margin"]
        held = profile_distance(flat, *profile)
        folds = int(self.settings["calibration_folds"])
        if folds >= 2:
            # each fold's profile is shrunk as the device's own (its fewer windows would
            # shrink it harder and understate the distances the device's profile will see)
            lam = profile_shrinkage(flat, self.settings) if self.settings["fold_shrinkage"] > 0 else None
            for train, block in fold_slices(m, folds, gap):
                if train.size >= 8:
                    held[block] = profile_distance(flat[block], *fit_profile(flat[train], self.settings, lam))
        quantile = partial(tail_quantile, alpha=target, log_scale=self.settings["tail_log"] > 0,
                           xi_max=self.settings["tail_shape_max"])  # models.scoring.tail
        d_scale = max(quantile(held), 1e-3)
        r_scale = np.array([max(quantile(res[:, j]), 1e-4) for j in range(c)])
        joint_values, conf = np.maximum(held / d_scale, (res / r_scale).max(axis=1)), self.settings["threshold_confidence"]
        x_scale = float("nan") if cross is None else max(quantile(cross), 1e-3)
        if cross is not None:
            joint_values = np.maximum(joint_values, cross / x_scale)
        q = (tail_quantile_bound(joint_values, target, conf, gap, self.settings["tail_log"] > 0,
                                 xi_max=self.settings["tail_shape_max"]) if conf > 0 else quantile(joint_values))
        joint = max(q, 1.0) * margin
        return (r_scale * joint).astype(np.float32), float(d_scale * joint), float(x_scale * joint)

    def _quantile_thresholds(
        self, flat: np.ndarray, res: np.ndarray, flatness: np.ndarray | None,
        profile: tuple[np.ndarray, np.ndarray, np.ndarray, float],
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """The thresholds before issue 11 (``false_alarm_target = 0``): in-sample
        ``score_quantile`` x ``score_margin``; ``holdout`` > 0 adds the last windows'
        distances to a profile fitted without them."""
        m, c = res.shape
        dist = profile_distance(flat, *profile)
        hold = int(m * self.settings["holdout"])
        if hold >= 8 and m - hold >= 8:
            part = fit_profile(flat[: m - hold], self.settings)
            dist = np.concatenate([dist, profile_distance(flat[m - hold :], *part)])
        q, margin = self.settings["score_quantile"], self.settings["score_margin"]
        residual = (np.maximum(np.quantile(res, q, axis=0), 1e-4) * margin).astype(np.float32)
        flat_thr = (np.full(c, np.inf, dtype=np.float32) if flatness is None
                    else np.maximum(np.quantile(flatness, q, axis=0) * margin, 0.5).astype(np.float32))
        return residual, flat_thr, float(max(np.quantile(dist, q), 1e-3) * margin)

    def calibrate_windows(
        self, state: DeviceScoreState, inputs: np.ndarray, outputs: Mapping[str, np.ndarray]
    ) -> int:
        """Fit ``state`` at once from normal windows ``[M, T, C]`` (standardised) and the
        model's outputs on them, e.g. ``SeriesCalibration.calibration_windows``. Returns the
        number of windows dropped as anomalous (``calibrate``)."""
        x = np.asarray(inputs, dtype=np.float32)
        residual = self.statistics(x, np.asarray(outputs["reconstruction"], dtype=np.float32))
        return self.calibrate(state, np.asarray(outputs["embedding"]), residual, self.flatness(x), gap=x.shape[1],
                              cross=cross_features(x))

    def score_details(
        self, inputs: np.ndarray, outputs: Mapping[str, np.ndarray], states: Sequence[DeviceScoreState]
    ) -> ScoreResult:
        """Score a batch: ``inputs [N, T, C]`` standardised, ``outputs`` with
        ``reconstruction [N, T, C]`` and ``embedding [N, C, D]``, one state per window
        (the same state may appear several times, in time order). Uncalibrated states
        absorb their windows into calibration and get NaN."""
        x = np.asarray(inputs, dtype=np.float32)
        rec = np.asarray(outputs["reconstruction"], dtype=np.float32)
        emb = np.asarray(outputs["embedding"], dtype=np.float32)
        n, _, c = x.shape
        if rec.shape != x.shape or emb.ndim != 3 or emb.shape[:2] != (n, c) or len(states) != n:
            raise ValueError(
                f"shape mismatch: inputs {x.shape}, reconstruction {rec.shape}, embedding {emb.shape}, {len(states)} states"
            )
        d = emb.shape[2]
        finite: np.ndarray = np.asarray(
            np.isfinite(x).all(axis=(1, 2)) & np.isfinite(rec).all(axis=(1, 2)) & np.isfinite(emb).all(axis=(1, 2))
        )
        residual = self.statistics(np.nan_to_num(x), np.nan_to_num(rec))
        flatline = self.flatness(x)
        distance = np.full(n, np.nan, dtype=np.float32)
        distance_ratio = np.full(n, np.nan, dtype=np.float32)
        channel_scores = np.full((n, c), np.nan, dtype=np.float32)
        score = np.full(n, np.nan, dtype=np.float32)
        ready = np.zeros(n, dtype=bool)
        trimmed = 0
        for i, st in enumerate(states):
            if st.n_channels != c:
                raise ValueError(f"state has {st.n_channels} channels, window has {c}")
            if st.calibrated:
                ready[i] = finite[i]
            elif finite[i]:
                # keep every k-th window: at most MAX_FALLBACK_WINDOWS (bounded memory;
                # neighbouring windows overlap in T-1 readings and add little)
                if st.seen % max(1, -(-st.calibration_windows // MAX_FALLBACK_WINDOWS)) == 0:
                    if st._emb is None or st._res is None or st._flat is None:
                        st._emb, st._res, st._flat = [], [], []
                    st._emb.append(emb[i].copy())
                    st._res.append(residual[i].copy())
                    st._flat.append(flatline[i].copy())
                st.seen += 1
                if st.seen >= st.calibration_windows and st._emb and st._res and st._flat:
                    every = max(1, -(-st.calibration_windows // MAX_FALLBACK_WINDOWS))
                    trimmed += self.calibrate(st, np.stack(st._emb), np.stack(st._res), np.stack(st._flat),
                                              gap=-(-x.shape[1] // every))
        idx = np.flatnonzero(ready)
        if idx.size:
            sts = [states[int(i)] for i in idx]
            flat = emb[idx].reshape(idx.size, c * d)
            dthr = np.array([s.distance_threshold for s in sts], dtype=np.float32)
            forms: dict[int, list[int]] = {}
            for j, s in enumerate(sts):
                forms.setdefault(s.rank, []).append(j)
            if len(forms) == 1:  # the usual case: one form, no gathering
                rank = next(iter(forms))
                diff, rthr, fthr, dist, p_diff = self._profile_terms(flat, sts, rank, c)
            else:  # states fitted in different forms (scorers with different max_rank)
                diff, p_diff = np.empty_like(flat), np.empty_like(flat)
                rthr, fthr = np.empty((len(sts), c), np.float32), np.empty((len(sts), c), np.float32)
                dist = np.empty(len(sts), dtype=np.float32)
                for rank, sel in forms.items():
                    diff[sel], rthr[sel], fthr[sel], dist[sel], p_diff[sel] = self._profile_terms(
                        flat[sel], [sts[j] for j in sel], rank, c)
            ratio = dist / dthr
            # attribution: each channel's part of diff' P diff
            part = np.maximum((diff * p_diff).reshape(idx.size, c, d).sum(axis=2), 0.0)
            share = part / np.maximum(part.sum(axis=1, keepdims=True), 1e-12)
            res_ratio = residual[idx] / rthr
            # flatline check (states calibrated without flatness: threshold inf, ratio 0)
            res_ratio = np.maximum(res_ratio, flatline[idx] / fthr)
            channel_scores[idx] = np.maximum(res_ratio, ratio[:, None] * share)
            total = np.maximum(res_ratio.max(axis=1), ratio)
            xs = [j for j, s in enumerate(sts) if s.cross is not None] if self.settings["cross_channel"] > 0 else []
            if xs:  # the cross-channel statistic (models.scoring.cross), per channel over its threshold
                xthr = np.array([[sts[j].cross_threshold] for j in xs])
                rows = idx[xs]
                channel_scores[rows] = np.maximum(channel_scores[rows], cross_terms(
                    cross_features(x[rows]), [sts[j].cross for j in xs]) / xthr)  # type: ignore[misc]
                total[xs] = np.maximum(total[xs], channel_scores[rows].max(axis=1))
            distance[idx], distance_ratio[idx], score[idx] = dist, ratio, total
            self._adapt(sts, flat, total)
        residual[~finite] = np.nan
        return ScoreResult(score, channel_scores, residual, distance, distance_ratio, trimmed)

    def _profile_terms(
        self, flat: np.ndarray, sts: list[DeviceScoreState], rank: int, c: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For states whose profiles share one form (``rank``; 0 = packed precision):
        ``diff = flat - mu [n, F]``, residual and flat thresholds ``[n, C]``, the distance
        ``[n]`` and precision times diff ``[n, F]``."""
        f = flat.shape[1]
        if any(s.dim != f for s in sts):
            raise ValueError(f"a state's profile has another embedding size than the batch ({f})")
        prof = np.stack([s.profile for s in sts])  # type: ignore[misc]
        diff = flat - prof[:, :f]
        rthr, fthr, tail = prof[:, f : f + c], prof[:, f + c : f + 2 * c], prof[:, f + 2 * c :]
        if rank == 0:
            precision = np.ascontiguousarray(tail[:, unpack_index(f)])  # contiguous: einsum sums each row alike in any batch
            p_diff = np.einsum("nfg,ng->nf", precision, diff)
            return diff, rthr, fthr, np.einsum("nf,nf->n", diff, p_diff) / f, p_diff
        basis = np.ascontiguousarray(tail[:, : f * rank].reshape(len(sts), f, rank))
        inv_eig = np.ascontiguousarray(tail[:, f * rank :])
        inv_rest = np.array([s.inv_rest for s in sts], dtype=np.float32)
        dist = rank_k_distance(diff, basis, inv_eig, inv_rest)
        proj = np.einsum("nf,nfk->nk", diff, basis)
        p_diff = np.einsum("nfk,nk->nf", basis, proj * (inv_eig - inv_rest[:, None])) + diff * inv_rest[:, None]
        return diff, rthr, fthr, dist, p_diff

    def _adapt(self, sts: list[DeviceScoreState], emb: np.ndarray, scores: np.ndarray) -> None:
        """Let each state's embedding mean follow slow normal change (EWMA, rate
        ``adapt_rate`` per window), fed only by windows scoring below ``adapt_below`` (the
        threshold: a gate inside the normal range feeds it a biased part of normal) that come
        after at least ``adapt_calm`` such windows in a row (``state.calm``): no window of an
        excursion, nor the windows still holding its readings, teaches it."""
        rate = self.settings["adapt_rate"]
        below, need = self.settings["adapt_below"], int(self.settings["adapt_calm"])
        groups: dict[int, list[int]] = {}
        for j, ok in enumerate((scores < below).tolist()):  # windows in time order per state
            st = sts[j]
            st.calm = st.calm + 1 if ok else 0
            if ok and st.calm > need and rate > 0.0:
                groups.setdefault(id(st), []).append(j)
        single = [m[0] for m in groups.values() if len(m) == 1]  # a state once in the batch (the daemon's rounds)
        if single:  # one array step for all of them: bit for bit the step below (a one-row mean is the row)
            fed = [sts[j] for j in single]
            mus = np.stack([s.mu for s in fed])  # type: ignore[misc]
            for st, mu in zip(fed, (mus + (1.0 - (1.0 - rate) ** 1) * (emb[single] - mus)).astype(np.float32)):
                st.mu = mu
        for members in (m for m in groups.values() if len(m) > 1):
            st = sts[members[0]]
            assert st.mu is not None  # k sequential EWMA steps, applied to the mean difference of the batch
            weight = 1.0 - (1.0 - rate) ** len(members)
            st.mu = (st.mu + weight * (emb[members] - st.mu).mean(axis=0)).astype(np.float32)

    def score(
        self, inputs: np.ndarray, outputs: Mapping[str, np.ndarray], states: Sequence[DeviceScoreState]
    ) -> np.ndarray:
        """``[N]`` scores (1.0 = alert threshold; NaN while a state calibrates). See score_details."""
        return self.score_details(inputs, outputs, states).score

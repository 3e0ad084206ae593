"""Inference stage: per-device calibration, batched ONNX Runtime calls, window scores.

The pipeline thread calls ``observe(window)`` after each reading and ``score(windows)``
for a batch of due windows. A device goes through two calibration phases before its
scores count. Its first ``calibration_steps`` readings fix each channel's mean/std (so
windows are standardised by device, never per window), and the moment that calibration
freezes the model runs once over the windows cut from those same readings to fit the
device's normal score profile (models.scoring.scorer, the path ``model score`` takes too). The
readings are then released. Due windows are grouped by (adapter, channel count), one ONNX
Runtime call per group. From then on each reading moves the device's standardisation
level by at most a bounded step (``level_follow``, models.scoring.level), so slow legitimate
change is followed and an alarm can end once a fault does. Each window is standardised
with the level its own reading reached, under the hold its device's previous score set
(``score_groups``), so a device's scores do not depend on how its readings were batched;
``model score`` reproduces them bit for bit (models.scoring.stream).

``swap_runtime`` replaces the model between batches (an attribute swap, atomic under the
GIL); device score profiles are then re-learnt from the first ``calibration_windows``
scored windows (their readings are gone), because a new model has a new embedding space,
while the channel standardisation is kept. The same fallback covers a device whose
calibration readings could not be scored.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.metrics import Metrics
from gateway.pipeline.columns import ScoredGroup, apply_follows, device_rounds
from gateway.pipeline.windows import DeviceWindow
from models.runtime import ModelRuntime
from models.scoring.calibration import ReadingsPool, SeriesCalibration
from models.scoring.level import LevelTracker, window_level
from models.scoring.scorer import DeviceScoreState, WindowScorer

log = logging.getLogger(__name__)

INFERENCE_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_WINDOWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(slots=True)
class DueWindow:
    """A window snapshot taken at the reading that made it due: ``raw [T, C]`` in physical
    units; ``score`` standardises a whole group at once (``standardize``)."""

    window: DeviceWindow
    raw: np.ndarray
    timestamp: float
    state: _DeviceState
    ingested: float | None = None  # monotonic time its reading entered the pipeline (latency)
    follow: bool = False  # its reading's level step is still to be applied (columns.apply_follows)
    # float64 [C]: the level this window is standardised with, as its own reading's level step
    # left it (None: the device's current ``norm[0]``, i.e. no level tracker). Kept per window
    # so a window's score does not depend on which later readings share its batch.
    level: np.ndarray | None = None


@dataclass(slots=True)
class _DeviceState:
    # the readings calibration until it froze and fitted the score profile (then None:
    # only its mean and std below are needed from there on)
    calibration: SeriesCalibration | None
    score_state: DeviceScoreState
    generation: int
    # float64 [3, C], set when the calibration froze (one array: 10,000 devices): the level
    # windows are standardised with (row 0: the frozen mean + the tracker's offset x std),
    # the frozen std (row 1) and the frozen mean (row 2)
    norm: np.ndarray | None = None
    # each channel's level following the device at a bounded rate (None: level_follow 0)
    level: LevelTracker | None = None


@dataclass(slots=True)
class KeptState:
    """What ``InferenceEngine.import_device`` kept of a device's stored state."""

    standardised: bool = False  # frozen standardisation, or the calibration in progress
    score_profile: bool = False  # the score state as stored (same model)
    recalibrating: bool = False  # score state new: re-learnt from the first scored windows


def standardize(due: list[DueWindow]) -> np.ndarray:
    """``[N, T, C]`` float32 z-values of due windows that share a channel count: the same
    arithmetic as ``SeriesCalibration.standardize`` (float64 ``(x - mean) / std``), done
    for the batch in one numpy expression with each device's frozen mean/std."""
    raw = np.stack([d.raw for d in due]).astype(np.float64)
    norm = np.stack([d.state.norm for d in due])  # type: ignore[misc]
    level = np.stack([d.level if d.level is not None else n[0] for d, n in zip(due, norm)])
    return ((raw - level[:, None, :]) / norm[:, 1, None, :]).astype(np.float32)


class InferenceEngine:
    def __init__(self, runtime: ModelRuntime, metrics: Metrics, *, calibration_steps: int | None = None,
                 calibration_windows: int | None = None) -> None:
        self.metrics = metrics
        self._overrides: dict[str, float] = {k: float(v) for k, v in (("calibration_steps", calibration_steps),
                                                                     ("calibration_windows", calibration_windows))
                                             if v is not None}
        self.runtime = runtime
        self.scorer = WindowScorer(runtime.manifest, **self._overrides)
        self.generation = 0
        self.calibration_steps = int(self.scorer.settings["calibration_steps"])
        # calibration-reading blocks per channel count (models.scoring.calibration.ReadingsPool)
        self._pools: dict[int, ReadingsPool] = {}
        self._retired: list[Any] = []  # runtimes replaced by swap_runtime, closed at the next batch
        metrics.describe("inference_batches_total", "ONNX Runtime calls")
        metrics.describe("windows_scored_total", "Windows scored by the model")
        metrics.histogram("inference_batch_seconds", INFERENCE_SECONDS_BUCKETS,
                          "Seconds one ONNX Runtime call took (one batch of windows)")
        metrics.histogram("inference_batch_windows", BATCH_WINDOWS_BUCKETS, "Windows in one ONNX Runtime call")
        metrics.describe("score_trim_windows_total",
                         "Score-calibration windows dropped as anomalous before a device's profile was fitted")

    def swap_runtime(self, runtime: ModelRuntime) -> None:
        """Serve ``runtime`` from the next batch on; device score profiles are re-learnt.
        The replaced runtime is closed on the pipeline thread at the next batch (no batch or
        calibration can still be using it then)."""
        self.scorer = WindowScorer(runtime.manifest, **self._overrides)
        old, self.runtime = self.runtime, runtime
        if old is not runtime:
            self._retired.append(old)
        self.generation += 1

    def _close_retired(self) -> None:
        while self._retired:
            old = self._retired.pop()
            try:
                old.close()
            except Exception as exc:  # noqa: BLE001 - a runtime that fails to close is only logged
                log.warning("closing the replaced model failed: %s", exc)
            self.metrics.inc("model_runtimes_closed_total")

    def _state(self, window: DeviceWindow) -> _DeviceState:
        st = window.state
        if not isinstance(st, _DeviceState):
            c = len(window.channels)
            st = _DeviceState(SeriesCalibration(c, self.calibration_steps, pool=self._pool(c)), self.scorer.new_state(c),
                              self.generation)
            window.state = st
        elif st.generation != self.generation:
            st.score_state = self.scorer.new_state(len(window.channels))
            st.generation = self.generation
        return st

    # ---- device state (gateway.state.codec) ----------------------------------------------
    def export_device(self, window: DeviceWindow) -> dict[str, Any] | None:
        """The engine's state of one device as plain data (the score state is the live object:
        encode it before the next batch); None before its first reading."""
        st = window.state
        if not isinstance(st, _DeviceState):
            return None
        level = None if st.level is None else {"offset": st.level.offset.copy(), "step": float(st.level.step),
                                               "hold": st.level.hold.copy()}
        return {"norm": st.norm, "level": level,
                "calibration": None if st.calibration is None else st.calibration.export_state(),
                "score": st.score_state if st.generation == self.generation else None}

    def import_device(self, window: DeviceWindow, state: dict[str, Any] | None, keep_score: bool) -> KeptState:
        """Install a device's engine state on its (restored) window. ``keep_score`` False
        (another model or score settings) or an unusable score state: a new score state that
        re-learns from the device's first scored windows, standardisation kept. Without a
        usable standardisation the device calibrates from its next readings."""
        kept = KeptState()
        window.state = None
        if not state:
            return kept
        c = len(window.channels)
        norm, cal_state = state.get("norm"), state.get("calibration")
        calibration: SeriesCalibration | None = None
        level: LevelTracker | None = None
        if norm is not None:
            norm = np.asarray(norm, dtype=np.float64)
            if norm.shape == (2, c):  # a checkpoint from before level following: no offset yet
                norm = np.stack([norm[0], norm[1], norm[0]])
            if norm.shape != (3, c):
                return kept
            level = self._restored_level(state.get("level"), c)
            if level is None or not level.offset.any():
                norm[0] = norm[2]  # no offset kept: windows standardised as the calibration's were
        elif cal_state is not None and int(cal_state.get("calibration_steps", -1)) == self.calibration_steps:
            try:
                calibration = SeriesCalibration.from_state(cal_state, pool=self._pool(c))
            except (ValueError, KeyError, TypeError):
                return kept
        else:
            return kept
        kept.standardised = True
        score = state.get("score")
        if keep_score and isinstance(score, DeviceScoreState) and score.n_channels == c:
            kept.score_profile = True
        else:
            score = self.scorer.new_state(c)
            kept.recalibrating = norm is not None
        window.state = _DeviceState(calibration, score, self.generation, norm, level)
        return kept

    def _restored_level(self, stored: Any, c: int) -> LevelTracker | None:
        """The device's level tracker from a checkpoint (None when level following is off, or
        the stored one does not fit: then a fresh tracker starts at offset 0)."""
        rate = self.scorer.settings["level_follow"]
        if rate <= 0:
            return None
        tracker = LevelTracker(c, self.calibration_steps, rate)
        if isinstance(stored, dict):
            offset = np.asarray(stored.get("offset"), dtype=np.float64)
            if offset.shape == (c,) and np.isfinite(offset).all():
                tracker.offset = offset
            hold = stored.get("hold")  # absent in checkpoints from before level_hold: nothing held
            if hold is not None and np.shape(hold) == (c,):
                tracker.hold = np.asarray(hold, dtype=bool)
        return tracker

    @staticmethod
    def state_classes() -> dict[str, type]:
        """The classes of the engine's device state, for ``gateway.state.tree.unpack``."""
        return {f"{DeviceScoreState.__module__}.{DeviceScoreState.__qualname__}": DeviceScoreState}

    def _pool(self, c: int) -> ReadingsPool:
        pool = self._pools.get(c)
        if pool is None:
            pool = self._pools[c] = ReadingsPool(self.calibration_steps, c)
        return pool

    def observe(self, window: DeviceWindow, defer_follow: bool = False) -> DueWindow | None:
        """Account for the reading just pushed; a snapshot when the window is due for scoring.
        ``defer_follow``: the level step of this reading is left to the batch it is scored in
        (``DueWindow.follow``, applied for the whole batch by ``score``); the pipeline's chunk
        path does this. Otherwise the level moves now (one median per reading)."""
        st = window.state
        if not isinstance(st, _DeviceState) or st.generation != self.generation:
            st = self._state(window)
        if st.norm is None:
            cal = st.calibration
            assert cal is not None  # dropped only once mean and std are set
            if not cal.frozen:
                cal.update(window.latest())
                if not cal.frozen:
                    return None
            st.norm = np.stack([cal.mean, cal.std, cal.mean])
            self._calibrate_scores(window, st, cal)
            st.calibration = None
        elif st.level is not None and window.count >= window.length:
            if defer_follow:
                return DueWindow(window, window.values(), window.last_timestamp, st, None, True)
            self._follow(st, window)
        if window.count < window.length:
            return None
        return DueWindow(window, window.values(), window.last_timestamp, st, level=st.norm[0].copy())

    @staticmethod
    def _follow(st: _DeviceState, window: DeviceWindow) -> None:
        """Feed the newest window's level to the device's level tracker; the windows scored
        from this one on are standardised with the moved level (models.scoring.level)."""
        norm, level = st.norm, st.level
        assert norm is not None and level is not None
        offset = level.update(window_level((window.values() - norm[2]) / norm[1]))[-1]
        norm[0] = norm[2] + offset * norm[1]

    def _adapter_for(self, window: DeviceWindow, runtime: ModelRuntime) -> str | None:
        adapter = window.adapter if window.adapter in runtime.adapter_names else None
        if window.adapter is not None and adapter is None:
            self.metrics.inc("adapter_fallbacks_total", adapter=str(window.adapter))
        return adapter

    def _calibrate_scores(self, window: DeviceWindow, st: _DeviceState, cal: SeriesCalibration) -> None:
        """Fit the device's score profile from its calibration readings, then drop them.
        On failure the state stays uncalibrated and learns from its first scored windows."""
        try:
            windows = cal.calibration_windows(window.length)
            rate = self.scorer.settings["level_follow"]
            if rate > 0 and len(windows):
                st.level = LevelTracker(len(window.channels), self.calibration_steps, rate)
            if len(windows) >= 8:
                runtime = self.runtime
                outputs = runtime.run(windows, adapter=self._adapter_for(window, runtime))
                trimmed = self.scorer.calibrate_windows(st.score_state, windows, outputs)
                self.metrics.inc("devices_calibrated_total")
                if trimmed:
                    self.metrics.inc("score_trim_windows_total", trimmed)
            else:
                self.metrics.inc("score_calibration_deferred_total", reason="too_few_readings")
        except Exception as exc:  # noqa: BLE001 - counted; the scored-window fallback takes over
            self.metrics.inc("score_calibration_deferred_total", reason=type(exc).__name__)
            log.warning("score calibration of %s from its readings failed (%s); using its first scored windows",
                        window.device_id, exc)
        finally:
            cal.release()

    def score(self, due: list[DueWindow]) -> list[tuple[DueWindow, float, dict[str, Any]]]:
        """Run the model on due windows (time order kept per device); returns
        (due window, score, details) for windows of calibrated devices."""
        return [(g.due[i], g.scores[i], g.details(i)) for g in self.score_groups(due) for i in range(len(g.due))]

    def score_groups(self, due: list[DueWindow]) -> list[ScoredGroup]:
        """``score`` as columns: one ``ScoredGroup`` per model call (windows with a finite
        score only; details built on demand).

        The batch is scored in device rounds (``device_rounds``: round r holds the r-th
        window of each device; usually there is one). A device's state that a score
        updates (the level hold, the profile's adaptation) therefore reaches its next
        window exactly as if each window had been scored alone, so scores and alerts do not
        depend on how the batcher cut the stream (tests/test_columnar_equal.py). Deferred
        level steps are applied per round, before it is standardised."""
        rounds = device_rounds(due)
        if len(rounds) == 1:
            return self._score_round(due)
        return [g for part in rounds for g in self._score_round(part)]

    def _score_round(self, due: list[DueWindow]) -> list[ScoredGroup]:
        """Score windows of distinct devices (one round) in one model call per (adapter,
        channel count)."""
        apply_follows(due)
        if self._retired:
            self._close_retired()
        runtime = self.runtime  # one model for the whole batch, even if a swap happens meanwhile
        scorer = self.scorer
        groups: dict[tuple[str | None, int], list[DueWindow]] = {}
        for d in due:
            groups.setdefault((self._adapter_for(d.window, runtime), len(d.window.channels)), []).append(d)
        out: list[ScoredGroup] = []
        for (adapter, _), group in groups.items():
            for d in group:
                if d.state.generation != self.generation:
                    self._state(d.window)
            x = standardize(group)
            started = time.perf_counter()
            outputs = runtime.run(x, adapter=adapter)
            elapsed = time.perf_counter() - started
            result = scorer.score_details(x, outputs, [d.state.score_state for d in group])
            m = self.metrics
            m.inc("inference_batches_total")
            m.inc("inference_seconds_total", elapsed)
            m.inc("windows_scored_total", len(group))
            m.set("inference_last_batch_size", len(group))
            m.set("inference_last_batch_seconds", elapsed)
            m.observe("inference_batch_seconds", elapsed)
            m.observe("inference_batch_windows", len(group))
            if result.trimmed:  # fallback calibrations (after a model swap) completed in this batch
                m.inc("score_trim_windows_total", result.trimmed)
            scores = result.score.tolist()
            hold_at = scorer.settings["level_hold"]
            for d, score, channel_scores in zip(group, scores, result.channel_scores):  # one window per device
                if d.state.level is not None:
                    d.state.level.hold_from(score, channel_scores, hold_at)
            ok = [i for i, s in enumerate(scores) if math.isfinite(s)]
            if not ok:
                continue
            contributions = result.channel_scores[ok] if len(ok) < len(scores) else result.channel_scores
            tops = np.nanargmax(contributions, axis=1).tolist()
            out.append(ScoredGroup([group[i] for i in ok], [scores[i] for i in ok], tops, contributions, adapter))
        return out

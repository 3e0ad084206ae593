"""Scoring settings: the defaults, and how a model manifest and overrides change them.

``settings_from(manifest, **overrides)`` is what models.scoring.scorer, models.scoring.calibration and
``model score``/``eval`` read their thresholds and calibration lengths from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, float] = {
    "calibration_steps": 1008,
    "calibration_windows": 1008,
    "false_alarm_target": 1e-4,
    "calibration_folds": 5,
    "fold_shrinkage": 1.0,
    "threshold_confidence": 0.9,
    "score_quantile": 0.995,
    "score_margin": 1.0,
    "raise": 1.0,
    "clear": 0.7,
    "raise_after": 2,
    "clear_after": 3,
    "recency_halflife": 8.0,
    "shrinkage": 0.2,
    "shrinkage_auto": 1.0,
    "max_rank": 32,
    "holdout": 0.0,
    "adapt_rate": 0.003,
    "adapt_below": 1.0,
    "adapt_calm": 32,
    "level_follow": 1.0,
    "level_hold": 1.0,
    "tail_log": 1.0,
    "tail_shape_max": 0.5,
    "calibration_trim": 0.0,
    "calibration_trim_z": 8.0,
    "cross_channel": 0.0,
}
"""Scoring settings used where the manifest's ``thresholds`` do not give one.

``false_alarm_target``: the declared false-alarm rate, the probability that a window of
the device's normal behaviour scores at or over 1.0 (1e-4: one window per 10,000 normal
windows); thresholds are set for it on held-out calibration statistics
(models.scoring.tail). 0 selects the thresholds from before it: the in-sample
``score_quantile`` x ``score_margin``. ``calibration_folds``: cross-fitting folds for the
held-out distances; ``fold_shrinkage`` 1: each fold's profile is shrunk with the device
profile's own intensity (0: its own, larger for fewer windows, which understated the
distances the device's profile meets). ``threshold_confidence``: the window-score
threshold is this upper bound (a block bootstrap of the held-out values) of the tail
quantile rather than its point estimate (0), so one calibration stretch's sampling
luck sets it less often too low. ``score_margin``: a factor on every threshold (1.0 with a target).
``shrinkage``: the least covariance shrinkage; ``shrinkage_auto`` 1: the OAS intensity for
the calibration's effectively independent windows where larger. ``adapt_rate``,
``adapt_below``, ``adapt_calm``: the profile mean follows windows scoring below
``adapt_below`` after ``adapt_calm`` of them in a row (1.0, the alert threshold: a gate
inside the normal range, 0.5, fed the mean a biased part of normal and it drifted). ``level_follow``: how fast each
channel's standardisation level may follow the device (calibration stds per calibration
length; models.scoring.level; 0 = frozen). ``level_hold``: while a window scores at or
over it, the level does not follow the channels carrying that score (0 = always follow).
``tail_log`` 1: the tail quantiles are fitted to log-values (Pareto-type extrapolation,
conservative), 0: to the raw values; ``tail_shape_max``: the largest generalised Pareto
shape the fit may take (models.scoring.tail; docs/models.md has both measured).
``calibration_trim``: the largest fraction of
score-calibration windows that may be dropped as anomalous before the profile and
thresholds are fitted (0, the default, turns trimming off: it dropped rare normal events,
docs/models.md); ``calibration_trim_z``: the robust log-z beyond which a window counts as
anomalous (models.scoring.trim). ``cross_channel`` 1: devices with 2 or more channels
also get the model-free cross-channel statistic (models.scoring.cross; 0, the default:
measured in docs/models.md, issue 11)."""


def settings_from(manifest: Any = None, **overrides: float) -> dict[str, float]:
    """Scoring settings: ``DEFAULTS`` < manifest ``thresholds`` < non-None ``overrides``."""
    out = dict(DEFAULTS)
    thresholds = getattr(manifest, "thresholds", None)
    if thresholds is None and isinstance(manifest, Mapping):
        thresholds = manifest.get("thresholds")
    out.update({k: float(v) for k, v in (thresholds or {}).items() if isinstance(v, (int, float))})
    out.update({k: float(v) for k, v in overrides.items() if v is not None})
    return out

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
    "score_quantile": 0.995,
    "score_margin": 1.5,
    "raise": 1.0,
    "clear": 0.7,
    "raise_after": 2,
    "clear_after": 3,
    "recency_halflife": 8.0,
    "shrinkage": 0.2,
    "max_rank": 32,
    "holdout": 0.0,
    "adapt_rate": 0.003,
    "adapt_below": 1.0,
    "calibration_trim": 0.2,
    "calibration_trim_z": 8.0,
}
"""Scoring settings used where the manifest's ``thresholds`` do not give one.

``calibration_trim``: the largest fraction of score-calibration windows that may be dropped
as anomalous before the profile and thresholds are fitted (0 turns trimming off);
``calibration_trim_z``: the robust log-z beyond which a window counts as anomalous
(models.scoring.trim)."""


def settings_from(manifest: Any = None, **overrides: float) -> dict[str, float]:
    """Scoring settings: ``DEFAULTS`` < manifest ``thresholds`` < non-None ``overrides``."""
    out = dict(DEFAULTS)
    thresholds = getattr(manifest, "thresholds", None)
    if thresholds is None and isinstance(manifest, Mapping):
        thresholds = manifest.get("thresholds")
    out.update({k: float(v) for k, v in (thresholds or {}).items() if isinstance(v, (int, float))})
    out.update({k: float(v) for k, v in overrides.items() if v is not None})
    return out

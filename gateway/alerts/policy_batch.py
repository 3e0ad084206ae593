"""The alert policy's batch entry: a whole scored batch through the anomaly lifecycle.

``on_scores(policy, group)`` gives the same transitions and alerts, in the same order, as
``AlertPolicy.on_score`` called window by window (``tests/test_columnar_equal.py``), under
one lock acquisition and with the thresholds compared as one array operation. Python per
window is left only where the device's state can change: a window below the raise
threshold of a device with no anomaly track (the usual case) only marks the kind as seen,
so no details dict, message or severity is built for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gateway.alerts.policy_state import KIND_BIT, Severity
from gateway.types import Alert

if TYPE_CHECKING:
    from gateway.alerts.policy import AlertPolicy
    from gateway.pipeline.columns import ScoredGroup

_ANOMALY = KIND_BIT["anomaly"]


def on_scores(policy: AlertPolicy, group: ScoredGroup) -> list[Alert]:
    """Feed every window of ``group`` (time order kept per device) to ``policy``; return the
    ``anomaly`` alerts it causes."""
    c = policy.config
    raise_at, clear_at, raise_after, clear_after = c.anomaly_rule()
    scores = group.scores
    bad = (np.asarray(scores) >= raise_at).tolist()
    out: list[Alert] = []
    device_of = policy._device  # noqa: SLF001 - the policy's own batch entry
    step = policy._step  # noqa: SLF001
    with policy._lock:  # noqa: SLF001
        for i, due in enumerate(group.due):
            device_id = due.window.device_id
            dev = device_of(device_id)
            is_bad = bad[i]
            if not is_bad and (dev.tracks is None or "anomaly" not in dev.tracks):
                dev.seen |= _ANOMALY  # what _step does for a fresh kind that stays quiet
                continue
            score = scores[i]
            severity: Severity = "critical" if score >= raise_at * c.critical_factor else "warning"
            extra = {"score": score, "raise_threshold": raise_at, "clear_threshold": clear_at, **group.details(i)}
            alert = step(device_id, dev, "anomaly", due.timestamp, bad=is_bad, good=score < clear_at,
                         raise_after=raise_after, clear_after=clear_after, severity=severity, score=score,
                         details=extra,
                         message=f"anomaly score {score:.3g} (threshold {raise_at:g})" if is_bad else "")
            if alert:
                out.append(alert)
    return out

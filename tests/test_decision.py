"""The model tools' anomaly decision (models.scoring.decision) equals the daemon's alert policy.

``model score`` / ``model eval`` cannot import the daemon (models never imports gateway), so
the raise/clear lifecycle exists twice: once as a pure function over a series, once inside
the policy with delivery concerns on top. With rate limits off they must flag alike.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.alerts.policy import anomaly_flags
from gateway.alerts.policy_config import AlertPolicyConfig
from models.scoring.decision import Hysteresis, debounced_flags


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("raise_after", "clear_after"), [(1, 1), (2, 3), (3, 1)])
def test_pure_decision_flags_equal_the_alert_policy(seed: int, raise_after: int, clear_after: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.gamma(2.0, 0.45, size=400)
    scores[rng.random(400) < 0.05] = np.nan  # unscored windows change nothing
    config = AlertPolicyConfig(raise_threshold=1.0, clear_threshold=0.7, raise_after=raise_after,
                               clear_after=clear_after, min_interval_s=0.0,
                               max_alerts_per_device_per_hour=2**31 - 1)
    rule = Hysteresis(raise_at=1.0, clear_at=0.7, raise_after=raise_after, clear_after=clear_after)
    expected = anomaly_flags(scores.tolist(), config)
    got = debounced_flags(scores, rule)
    assert got.tolist() == expected
    assert 0 < got.sum() < len(got)  # the series exercises both raise and clear


def test_a_sustained_fault_raises_once_and_clears_after_it_ends() -> None:
    rule = Hysteresis(raise_at=1.0, clear_at=0.7, raise_after=2, clear_after=3)
    scores = [0.1] * 5 + [2.0] * 10 + [0.8] * 4 + [0.2] * 5
    flags = debounced_flags(scores, rule).tolist()
    assert flags[:6] == [False] * 6 and flags[6] is True  # raised on the 2nd bad window
    assert all(flags[6:21]) and flags[21:] == [False] * 3  # 0.8 is not good: clear needs 3 below 0.7

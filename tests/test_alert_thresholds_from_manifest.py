"""The daemon's anomaly thresholds default to the serving model's manifest, as ``model score`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.alerts.policy import AlertPolicy, anomaly_flags
from gateway.alerts.policy_config import AlertPolicyConfig
from models.scoring.settings import DEFAULTS

BASE_MANIFEST = Path(__file__).resolve().parents[1] / "models" / "base" / "manifest.json"


def test_unset_thresholds_come_from_the_manifest() -> None:
    manifest = {"thresholds": {"raise": 1.3, "clear": 0.9, "raise_after": 4, "clear_after": 5}}
    cfg = AlertPolicyConfig().resolved(manifest)
    assert (cfg.raise_threshold, cfg.clear_threshold, cfg.raise_after, cfg.clear_after) == (1.3, 0.9, 4, 5)


def test_configured_thresholds_win_over_the_manifest() -> None:
    manifest = {"thresholds": {"raise": 1.3, "clear": 0.9, "raise_after": 4, "clear_after": 5}}
    cfg = AlertPolicyConfig(raise_threshold=2.0, raise_after=1).resolved(manifest)
    assert (cfg.raise_threshold, cfg.clear_threshold, cfg.raise_after, cfg.clear_after) == (2.0, 0.9, 1, 5)


def test_configured_raise_below_manifest_clear_keeps_hysteresis_order() -> None:
    cfg = AlertPolicyConfig(raise_threshold=0.5).resolved({"thresholds": {"clear": 0.9}})
    assert cfg.clear_threshold == 0.5 and cfg.raise_threshold == 0.5


def test_no_manifest_means_scoring_defaults() -> None:
    policy = AlertPolicy(AlertPolicyConfig())
    c = policy.config
    assert (c.raise_threshold, c.clear_threshold, c.raise_after, c.clear_after) == (
        DEFAULTS["raise"], DEFAULTS["clear"], DEFAULTS["raise_after"], DEFAULTS["clear_after"])


def test_bundled_model_policy_debounces_as_its_manifest_says() -> None:
    thresholds = json.loads(BASE_MANIFEST.read_text())["thresholds"]
    cfg = AlertPolicyConfig(min_interval_s=0, max_alerts_per_device_per_hour=10**6).resolved(
        {"thresholds": thresholds})
    n = int(thresholds["raise_after"])
    # n - 1 anomalous windows raise nothing; the n-th raises
    assert anomaly_flags([5.0] * (n - 1), cfg) == [False] * (n - 1)
    assert anomaly_flags([5.0] * n, cfg)[-1] is True


def test_clear_above_raise_is_refused_when_both_set() -> None:
    with pytest.raises(ValueError):
        AlertPolicyConfig(raise_threshold=1.0, clear_threshold=1.5)

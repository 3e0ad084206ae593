"""The model-free cross-channel statistic (models.scoring.cross, ``cross_channel``; issue 11)."""

from __future__ import annotations

import numpy as np

from models.scoring.cross import cross_features, cross_terms, fit_cross
from models.scoring.scorer import WindowScorer
from models.scoring.settings import settings_from

T, D = 16, 4


def related(rng: np.random.Generator, n: int, c: int = 3) -> np.ndarray:
    """``[n, c]`` readings whose first two channels move together (a shared wander)."""
    common = rng.standard_normal(n)
    out = rng.standard_normal((n, c)) * 0.3
    out[:, 0] += common
    out[:, 1] += common
    return out


def windows_of(z: np.ndarray) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(z, T, axis=0).transpose(0, 2, 1).astype(np.float32)


def fake_outputs(x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A stand-in model: reconstruction = input + small noise, embedding = each channel's
    window mean and spread repeated (the scorer's arithmetic does not depend on the model)."""
    rec = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    emb = np.concatenate([x.mean(1)[..., None], x.std(1)[..., None]], axis=2)
    return {"reconstruction": rec, "embedding": np.repeat(emb, D // 2, axis=2).astype(np.float32)}


def test_a_channel_leaving_its_relation_stands_out_where_a_joint_move_does_not() -> None:
    rng = np.random.default_rng(0)
    feats = related(rng, 600)
    packed, held = fit_cross(feats, settings_from(), gap=T)
    assert packed.shape == (3 + 9,) and held.shape == (600,)
    together = np.array([[1.5, 1.5, 0.0]])   # both related channels high, as the wander moves them
    apart = np.array([[1.5, -1.5, 0.0]])     # the same sizes, against the relation
    t_together, t_apart = cross_terms(together, [packed])[0], cross_terms(apart, [packed])[0]
    assert t_apart.max() > 5 * t_together.max()
    assert int(np.argmax(t_apart)) in (0, 1)
    assert t_apart.max() > np.quantile(held, 0.999)


def test_the_scorer_adds_it_only_when_set_and_only_for_several_channels() -> None:
    rng = np.random.default_rng(1)
    cal = windows_of(related(rng, 400))
    test = windows_of(related(rng, 200))
    test[-40:, -1, 1] -= 3.0  # channel 1 breaks away from channel 0 at the newest reading
    out_cal, out_test = fake_outputs(cal, rng), fake_outputs(test, rng)
    off, on = WindowScorer(None), WindowScorer(None, cross_channel=1)
    s_off, s_on = off.new_state(3), on.new_state(3)
    off.calibrate_windows(s_off, cal, out_cal)
    on.calibrate_windows(s_on, cal, out_cal)
    assert s_off.cross is None and s_on.cross is not None and np.isfinite(s_on.cross_threshold)
    r_off = off.score_details(test, out_test, [s_off] * len(test))
    r_on = on.score_details(test, out_test, [s_on] * len(test))
    assert np.mean(r_on.score[:-40] >= 1.0) <= np.mean(r_off.score[:-40] >= 1.0) + 0.02  # normal part: as quiet
    np.testing.assert_allclose(r_on.score, np.maximum(np.nanmax(r_on.channel_scores, axis=1), r_on.distance_ratio),
                               rtol=1e-5)
    assert np.mean(r_on.score[-40:] >= 1.0) > np.mean(r_off.score[-40:] >= 1.0)
    assert int(np.bincount(np.argmax(r_on.channel_scores[-40:], axis=1)).argmax()) == 1
    one = on.new_state(1)  # a single channel: nothing to relate, the statistic stays off
    on.calibrate_windows(one, cal[..., :1], fake_outputs(cal[..., :1], rng))
    assert one.cross is None


def test_features_are_the_newest_reading() -> None:
    x = np.arange(2 * T * 3, dtype=np.float32).reshape(2, T, 3)
    np.testing.assert_array_equal(cross_features(x), x[:, -1, :])

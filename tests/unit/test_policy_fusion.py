"""Outcome classification (table-driven) and score fusion (monotone, renormalised)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riskguard.engine.fusion import FusionWeights, fuse
from riskguard.engine.policy import Outcome, Thresholds, classify

T = Thresholds(challenge=0.5, review=0.7, block=0.9)


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.0, Outcome.ALLOW),
        (0.4999, Outcome.ALLOW),
        (0.5, Outcome.CHALLENGE),
        (0.6999, Outcome.CHALLENGE),
        (0.7, Outcome.REVIEW),
        (0.8999, Outcome.REVIEW),
        (0.9, Outcome.BLOCK),
        (1.0, Outcome.BLOCK),
    ],
)
def test_classify(score: float, expected: Outcome) -> None:
    assert classify(score, T) is expected


def test_classify_with_collapsed_thresholds_skips_middle_outcomes() -> None:
    t = Thresholds(challenge=0.8, review=0.8, block=0.8)
    assert classify(0.79, t) is Outcome.ALLOW
    assert classify(0.8, t) is Outcome.BLOCK


def test_outcomes_are_ordered() -> None:
    assert Outcome.ALLOW < Outcome.CHALLENGE < Outcome.REVIEW < Outcome.BLOCK
    assert Outcome.parse("Review") is Outcome.REVIEW
    with pytest.raises(ValueError, match="unknown outcome"):
        Outcome.parse("deny")


@pytest.mark.parametrize(
    ("challenge", "review", "block"), [(0.0, 0.5, 0.9), (0.6, 0.5, 0.9), (0.5, 0.7, 1.1)]
)
def test_thresholds_must_be_ordered(challenge: float, review: float, block: float) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        Thresholds(challenge, review, block)


def test_rules_alone_combine_by_noisy_or() -> None:
    fused = fuse([0.5, 0.5], None, FusionWeights())
    assert fused.score == pytest.approx(0.75)
    assert sum(fused.rule_contributions) == pytest.approx(0.75)
    assert fused.model_contribution == 0.0


def test_no_signal_is_zero() -> None:
    assert fuse([], None, FusionWeights()).score == 0.0
    assert fuse([], 0.0, FusionWeights()).score == 0.0


def test_model_weight_is_renormalised_when_present() -> None:
    fused = fuse([0.75], 0.75, FusionWeights(rules=1.0, model=1.0))
    assert fused.score == pytest.approx(0.75)
    fused = fuse([0.9], 0.0, FusionWeights(rules=1.0, model=1.0))
    assert fused.score == pytest.approx(1 - math.sqrt(0.1))


weights = st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=8)
maybe_model = st.none() | st.floats(min_value=0.0, max_value=1.0)


@given(weights, maybe_model, st.floats(min_value=0.0, max_value=1.0))
def test_fusion_is_bounded_and_monotone(
    rule_weights: list[float], model: float | None, extra: float
) -> None:
    w = FusionWeights(rules=1.0, model=2.0)
    base = fuse(rule_weights, model, w)
    assert 0.0 <= base.score <= 1.0
    assert sum(base.rule_contributions) + base.model_contribution == pytest.approx(
        base.score, abs=1e-9
    )
    # One more fired rule never lowers the score; a higher model score never lowers it.
    assert fuse([*rule_weights, extra], model, w).score >= base.score - 1e-12
    if model is not None:
        assert fuse(rule_weights, min(1.0, model + extra), w).score >= base.score - 1e-12

"""Fusing signals into one score in [0, 1], with each signal's share of it.

Within the rule family, fired rules combine by noisy-OR: ``1 - prod(1 - w_i)``. Families (rules,
model) combine by a weighted geometric pooling of their "no risk" probabilities:
``1 - prod((1 - s_f) ** a_f)`` with ``a_f`` the family weights renormalised over the families
present, so an absent model leaves the rules' score as it is. Both steps are monotone: more
evidence never lowers the score. Contributions split the score in proportion to each signal's
share of ``-log(1 - score)``, so they add up to the score exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_SIGNAL = 0.999  # keeps -log(1 - s) finite; a certainty is expressed by a hard outcome instead


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """Relative weight of each signal family."""

    rules: float = 1.0
    model: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.rules < math.inf and 0 <= self.model < math.inf):
            raise ValueError("fusion weights: rules must be > 0 and model >= 0, both finite")


@dataclass(frozen=True, slots=True)
class Fused:
    """The fused score and each signal's contribution to it."""

    score: float
    rule_contributions: tuple[float, ...]
    model_contribution: float


def _evidence(s: float) -> float:
    return -math.log1p(-min(max(s, 0.0), MAX_SIGNAL))


def fuse(rule_weights: Sequence[float], model_score: float | None, weights: FusionWeights) -> Fused:
    """Combine fired rule weights and an optional model score into one score."""
    total_weight = weights.rules + (weights.model if model_score is not None else 0.0)
    a_rules = weights.rules / total_weight
    rule_evidence = [a_rules * _evidence(w) for w in rule_weights]
    model_evidence = (
        weights.model / total_weight * _evidence(model_score) if model_score is not None else 0.0
    )
    evidence = sum(rule_evidence) + model_evidence
    score = -math.expm1(-evidence)
    if evidence <= 0.0:
        return Fused(0.0, tuple(0.0 for _ in rule_weights), 0.0)
    share = score / evidence
    return Fused(
        score=score,
        rule_contributions=tuple(e * share for e in rule_evidence),
        model_contribution=model_evidence * share,
    )

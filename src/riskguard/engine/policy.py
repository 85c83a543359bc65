"""Outcomes and the pure mapping from a fused score to an outcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.IntEnum):
    """Decision outcomes, ordered by severity: allow < challenge < review < block."""

    ALLOW = 0
    CHALLENGE = 1
    REVIEW = 2
    BLOCK = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Outcome:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(
                f"unknown outcome {text!r}; expected allow, challenge, review or block"
            ) from None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Lowest scores at which an event is challenged, reviewed and blocked."""

    challenge: float = 0.5
    review: float = 0.7
    block: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 < self.challenge <= self.review <= self.block <= 1.0:
            raise ValueError("thresholds must satisfy 0 < challenge <= review <= block <= 1")


def classify(score: float, thresholds: Thresholds) -> Outcome:
    """The outcome a score earns under ``thresholds`` (a threshold is inclusive)."""
    if score >= thresholds.block:
        return Outcome.BLOCK
    if score >= thresholds.review:
        return Outcome.REVIEW
    if score >= thresholds.challenge:
        return Outcome.CHALLENGE
    return Outcome.ALLOW

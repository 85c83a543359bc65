"""The model slot of the pipeline: one protocol every model kind serves through.

Training and artifacts come later; the engine only needs a score in [0, 1] and per-feature
contributions. With no model active the engine decides on rules alone (fusion renormalises).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ModelScore:
    """A model's score in [0, 1] and each input feature's signed contribution to it."""

    score: float
    contributions: Mapping[str, float] = field(default_factory=dict)


class Model(Protocol):
    """A scoring model: a version, the feature paths it reads and a pure ``score``."""

    @property
    def version(self) -> str: ...

    @property
    def features(self) -> tuple[str, ...]: ...

    def score(self, features: Mapping[str, Any]) -> ModelScore:
        """Score one event from its feature values (missing ones are absent or None)."""
        ...

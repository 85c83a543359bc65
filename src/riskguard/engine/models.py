"""The model slot of the pipeline: one protocol every model kind serves through.

The engine only needs a score in [0, 1] and per-feature contributions (trained and served
models: ``riskguard.adapters.ml``). With no model active the engine decides on rules alone
(fusion renormalises).

``score`` gets the decision's whole environment (event fields and feature values by path), not a
copy: it must not change it. A model may also declare ``event_types`` (a collection of event type
names): the engine then never calls it for other types, which keep the engine's fast path and
record no model version. A model without it is asked about every event and answers NaN for
events it cannot score.
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
        """Score one event from its environment (missing values are absent or None); read
        only. The contributions may be computed lazily, when the mapping is first read."""
        ...

"""Live population stability of a served model, as Prometheus gauges.

``ModelMonitor`` keeps, for the score and for the model's top inputs (``explain.top_features``
of the manifest), the bin of each of the last ``window`` observations in a ring buffer and the
count per bin, so ``observe`` costs a bisect and two counter updates per variable and PSI
against the training reference (stored in the manifest, see evaluation.py) is computed when
Prometheus scrapes. Until ``min_observations`` events have been seen the gauges read NaN: PSI
over a handful of events is noise.

Wiring (the service's part): build one monitor per active model version, call
``observe(features, score)`` after each decision with the mapping the model scored and its
score, and ``register(metrics.registry)`` it (unregister the old one when the version changes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from riskguard.adapters.ml.artifact import Bins
from riskguard.adapters.ml.evaluation import bin_index, psi
from riskguard.adapters.ml.serving import ServedModel


class _Window:
    """The bins of the last ``size`` values of one variable, and the count per bin."""

    __slots__ = ("bins", "counts", "position", "ring", "seen")

    def __init__(self, bins: Bins, size: int) -> None:
        self.bins = bins
        self.counts = [0] * len(bins.expected)
        self.ring = [-1] * size
        self.position = 0
        self.seen = 0

    def add(self, value: float) -> None:
        index = bin_index(self.bins.edges, value)
        old = self.ring[self.position]
        if old >= 0:
            self.counts[old] -= 1
        self.ring[self.position] = index
        self.counts[index] += 1
        self.position = (self.position + 1) % len(self.ring)
        self.seen += 1

    def psi(self) -> float:
        return psi(self.bins.expected, self.counts)


class ModelMonitor:
    """PSI of one model's score and top inputs over a sliding window of decisions."""

    def __init__(
        self, model: ServedModel, *, window: int = 10_000, min_observations: int = 500
    ) -> None:
        if window < 1 or min_observations < 1:
            raise ValueError("window and min_observations must be positive")
        monitoring = model.manifest.monitoring
        self.version = model.version
        self.min_observations = min_observations
        self._score = _Window(monitoring.score, window)
        self._inputs = [
            (name, model.getter(name), _Window(bins, window))
            for name, bins in monitoring.features.items()
        ]

    def observe(self, features: Mapping[str, Any], score: float) -> None:
        """Count one decision: the mapping its model scored and the score it gave."""
        self._score.add(score)
        for _name, get, window in self._inputs:
            window.add(get(features))

    @property
    def observations(self) -> int:
        return self._score.seen

    def psi(self) -> dict[str, float]:
        """PSI per variable (``score`` and each top input); NaN until enough observations."""
        if self._score.seen < self.min_observations:
            return {"score": math.nan, **{name: math.nan for name, _, _ in self._inputs}}
        return {"score": self._score.psi(), **{n: w.psi() for n, _, w in self._inputs}}

    def describe(self) -> list[Metric]:
        return list(self._families(with_samples=False))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "riskguard_model_psi",
            "Population stability index of the model's score and top inputs over the last "
            "decisions against its training data (NaN until enough decisions).",
            labels=["model_version", "variable"],
        )
        seen = GaugeMetricFamily(
            "riskguard_model_psi_observations",
            "Decisions in the PSI window of the active model.",
            labels=["model_version"],
        )
        if with_samples:
            for name, value in self.psi().items():
                gauge.add_metric([self.version, name], value)
            seen.add_metric([self.version], min(self._score.seen, len(self._score.ring)))
        yield gauge
        yield seen

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

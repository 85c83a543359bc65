"""The models one service process decides with: each tenant's active version, polled.

:class:`TenantModels` keeps one :class:`~riskguard.adapters.ml.registry.ActiveModel` per tenant
(scope = the tenant id, falling back to ``default``). ``refresh(tenant_ids)`` is blocking — it
``stat``s the pointer files and, when one changed, verifies and builds the new version (a gbm's
TreeSHAP tables take up to a second) — so the service runs it in a worker thread, from the same
poller that picks up new rulesets (``services.rules.EngineCache``), and rebuilds a tenant's
engine when its model changed. Every process (each uvicorn worker) polls for itself.

- A version that fails to load (tampered, foreign, unreadable) never replaces the model a
  tenant is served: the tenant keeps the previous one (or none), the failure is logged
  (``model_load_failed``), counted and shown by ``status`` (``GET /v1/models``) until the
  pointer names a version that loads.
- Stateless kinds (gbm, isolation_forest) are built once per version and shared by the tenants
  that use it; an ``online`` model learns from the events it scores, so each tenant gets its own
  instance (one tenant's traffic never moves another's scores).
- One :class:`~riskguard.adapters.ml.monitor.ModelMonitor` per version in use; ``observe``
  feeds it the decisions the model scored. The object is a Prometheus collector: PSI gauges
  (``riskguard_model_psi``, ``riskguard_model_psi_observations``) plus
  ``riskguard_model_load_failures`` (counter) and ``riskguard_model_load_failing`` (tenants
  whose active version this process cannot load).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from riskguard.adapters.ml.artifact import ForeignArtifactError, TamperedArtifactError
from riskguard.adapters.ml.monitor import ModelMonitor
from riskguard.adapters.ml.registry import (
    ActiveModel,
    ModelRegistry,
    RegistryError,
    UnknownVersionError,
    is_scope,
)
from riskguard.adapters.ml.serving import ServedModel

log = structlog.get_logger("riskguard.models")


@dataclass(frozen=True, slots=True)
class ServingStatus:
    """What one tenant is served in this process, and why not the active version if not."""

    serving: str | None  # the version this process decides with (None: no model)
    failed: str | None  # the active version that could not be loaded, if any
    problem: str | None  # why, in words safe to show a tenant (no file paths)


def describe_failure(exc: Exception) -> str:
    """A load failure in words without file paths."""
    if isinstance(exc, TamperedArtifactError):
        return "the artifact was altered after it was written"
    if isinstance(exc, ForeignArtifactError):
        return "the artifact is not a riskguard model"
    if isinstance(exc, UnknownVersionError):
        return "the version is not in the registry"
    if isinstance(exc, RegistryError):
        return "the active pointer cannot be read"
    return "the registry cannot be read"


class TenantModels:
    """The active model of every tenant of this process (see the module docstring)."""

    def __init__(
        self, model_dir: str | Path, *, monitor_window: int = 10_000, min_observations: int = 500
    ) -> None:
        self.registry = ModelRegistry(model_dir)
        self._window = monitor_window
        self._min_observations = min_observations
        self._watchers: dict[str, ActiveModel] = {}
        self._shared: dict[str, ServedModel] = {}  # stateless versions, built once
        self._monitors: dict[str, ModelMonitor] = {}
        self._lock = threading.Lock()  # one refresh at a time (it runs in worker threads)
        self.failures = 0

    # -- polling (blocking: run it in a thread) ------------------------------------------------

    def refresh(self, tenant_ids: Iterable[str]) -> dict[str, ServedModel | None]:
        """Check every tenant's pointer, load what changed; the model each is served now."""
        with self._lock:
            served: dict[str, ServedModel | None] = {}
            for tenant_id in tenant_ids:
                if not is_scope(tenant_id):
                    served[tenant_id] = None  # not a registry scope: it can have no model
                    continue
                watcher = self._watchers.get(tenant_id)
                if watcher is None:
                    watcher = self._watchers[tenant_id] = ActiveModel(
                        self.registry.root,
                        tenant_id,
                        interval=0.0,
                        load=self._loader(tenant_id),
                        on_error=self._on_error(tenant_id),
                    )
                before = watcher.model
                try:
                    watcher.refresh()
                except Exception as exc:  # a model that cannot be built must not stop polling
                    watcher.last_error = exc
                    self._on_error(tenant_id)(exc)
                model = watcher.model
                if model is not before:
                    log.info(
                        "model_active",
                        tenant=tenant_id,
                        version=None if model is None else model.version,
                        previous=None if before is None else before.version,
                    )
                served[tenant_id] = model
            in_use = {m.version: m for w in self._watchers.values() if (m := w.model) is not None}
            self._shared = {v: m for v, m in self._shared.items() if v in in_use}
            monitors = {}
            for version, model in in_use.items():
                monitor = self._monitors.get(version)
                if monitor is None:
                    monitor = ModelMonitor(
                        model, window=self._window, min_observations=self._min_observations
                    )
                monitors[version] = monitor
            self._monitors = monitors  # replaced whole: the event loop reads it unlocked
            return served

    def _loader(self, tenant_id: str) -> Any:
        def load(version: str) -> ServedModel:
            shared = self._shared.get(version)
            if shared is not None:
                return shared
            model = self.registry.model(version)
            if model.kind != "online":  # an online model learns: one per tenant
                self._shared[version] = model
            return model

        return load

    def _on_error(self, tenant_id: str) -> Any:
        def failed(exc: Exception) -> None:
            self.failures += 1
            watcher = self._watchers.get(tenant_id)
            log.error(
                "model_load_failed",
                tenant=tenant_id,
                version=None if watcher is None else watcher.failed_version,
                serving=None if watcher is None or watcher.model is None else watcher.model.version,
                error_type=type(exc).__name__,
                error=str(exc),
            )

        return failed

    # -- reading (the event loop) --------------------------------------------------------------

    def status(self, tenant_id: str) -> ServingStatus:
        """What this process serves the tenant, and the active version it could not load."""
        watcher = self._watchers.get(tenant_id)
        if watcher is None:
            return ServingStatus(None, None, None)
        model = watcher.model
        error = watcher.last_error
        return ServingStatus(
            None if model is None else model.version,
            watcher.failed_version if error is not None else None,
            None if error is None else describe_failure(error),
        )

    def failing(self) -> int:
        """Tenants whose active version this process cannot load."""
        return sum(1 for w in list(self._watchers.values()) if w.last_error is not None)

    def observe(self, version: str, env: Mapping[str, Any], score: float) -> None:
        """Count one decision the model ``version`` scored (its environment and score)."""
        monitor = self._monitors.get(version)
        if monitor is not None:
            monitor.observe(env, score)

    # -- Prometheus ----------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return list(self._families(with_samples=False))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        psi = GaugeMetricFamily(
            "riskguard_model_psi",
            "Population stability index of the model's score and top inputs over the last "
            "decisions against its training data (NaN until enough decisions).",
            labels=["model_version", "variable"],
        )
        seen = GaugeMetricFamily(
            "riskguard_model_psi_observations",
            "Decisions in the PSI window of an active model.",
            labels=["model_version"],
        )
        failures = CounterMetricFamily(
            "riskguard_model_load_failures",
            "Active model versions that failed to load (tampered, foreign or unreadable).",
        )
        failing = GaugeMetricFamily(
            "riskguard_model_load_failing",
            "Tenants whose active model version this process cannot load (each keeps the "
            "model it had, or none).",
        )
        if with_samples:
            for monitor in list(self._monitors.values()):
                for family in monitor.collect():
                    target = psi if family.name == "riskguard_model_psi" else seen
                    target.samples.extend(family.samples)
            failures.add_metric([], self.failures)
            failing.add_metric([], self.failing())
        yield psi
        yield seen
        yield failures
        yield failing

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

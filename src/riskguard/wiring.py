"""The only place that builds adapters from settings: stores, services, the HTTP app.

Embedded default (no ``RISKGUARD_DATABASE_URL`` / ``RISKGUARD_REDIS_URL``): SQLite in WAL mode
and in-process feature state. With ``RISKGUARD_REDIS_URL``, feature state and idempotency claims
live in Redis, shared by every replica; with a PostgreSQL ``RISKGUARD_DATABASE_URL``, records
do. Each tenant's active model comes from the registry in ``RISKGUARD_MODEL_DIR``, polled with
the rulesets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson
import structlog

from riskguard.adapters.http.metrics import Metrics
from riskguard.adapters.http.schemas import CheckOut
from riskguard.ports import DecisionStore, DependencyUnavailable, SharedStateStore
from riskguard.services.auth import KeyVerifier
from riskguard.services.decisions import DecisionService
from riskguard.services.rules import EngineCache, RulesService
from riskguard.settings import Settings

_CHECK_TIMEOUT_S = 1.0


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """JSON lines on stdout (one object per event) with time, level, logger and request id.

    Nothing logs bodies, keys or personal data: events carry ids, routes, statuses and
    durations only, and dependency errors are logged by type, not by their message (a
    connection error can echo a URL with a password).

    Each line is written with one ``write`` call (``WriteLogger``; ``PrintLogger`` writes the
    newline separately), so lines from several worker processes sharing one pipe never
    interleave.
    """
    level = getattr(logging, settings.log_level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(
                serializer=lambda obj, **_: orjson.dumps(obj).decode()
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=True,
    )


def build_store(settings: Settings) -> DecisionStore:
    from riskguard.adapters.sql.store import SqlDecisionStore

    return SqlDecisionStore(settings.database_url, outbox=settings.outbox)


def build_state(settings: Settings) -> SharedStateStore:
    if settings.redis_url is not None:
        from riskguard.adapters.redis.state import RedisStateStore

        return RedisStateStore(
            settings.redis_url.get_secret_value(),
            prefix=settings.redis_prefix,
            claim_ttl_s=settings.idempotency_ttl_s,
        )
    from riskguard.adapters.memory import MemoryStateStore

    return MemoryStateStore(claim_ttl_s=settings.idempotency_ttl_s)


_STOP_DISPATCHER_S = 5.0


def build_audit(settings: Settings) -> Any:
    """The audit log (None when ``RISKGUARD_AUDIT`` is off): in the decision database, signed
    with the key of ``RISKGUARD_AUDIT_SIGNING_KEY`` (in development one is made on first use)."""
    if not settings.audit:
        return None
    from riskguard.adapters.audit.keys import AuditSettings, load_signer
    from riskguard.adapters.sql.urls import is_memory

    audit_settings = AuditSettings()
    signer = load_signer(audit_settings)
    if is_memory(settings.database_url):
        from riskguard.adapters.audit.log import MemoryAuditLog

        return MemoryAuditLog(signer, policy=audit_settings.policy)
    from riskguard.adapters.sql.audit import SqlAuditLog

    return SqlAuditLog(
        settings.database_url,
        signer,
        policy=audit_settings.policy,
        batch_max=audit_settings.batch_max,
    )


class Container:
    """Everything one service process runs on; ``start``/``stop`` bracket its life."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: DecisionStore | None = None,
        state: SharedStateStore | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = store if store is not None else build_store(settings)
        self.state = state if state is not None else build_state(settings)
        self._build_models()
        self.engines = EngineCache(self.store, models=self.models)
        self.engines.on_swap = lambda _t, _v: self.metrics.ruleset_swaps.inc()
        self.rules = RulesService(self.store, self.engines)
        self.keys = KeyVerifier(self.store, settings.secret)
        self.decisions = DecisionService(
            settings, self.store, self.state, self.engines, self.metrics
        )
        self.decisions.observe_model = self.models.observe
        from riskguard.adapters.ml.feedback import LabelFeedback

        self.label_feedback = LabelFeedback(self.store, self.engines, self.state)
        self._poller: asyncio.Task[None] | None = None
        self._build_after_decision()

    def _build_models(self) -> None:
        """Each tenant's active model (registry ``RISKGUARD_MODEL_DIR``), with its PSI
        monitor and load-failure metrics on the service's Prometheus registry."""
        from riskguard.adapters.ml.live import TenantModels

        self.models = TenantModels(self.settings.model_dir)
        self.models.register(self.metrics.registry)

    async def model_changed(self, actor: str, record: Any) -> None:
        """After a model activation or rollback (``registry.Activation``) made through this
        process: record it in the audit log (when on; a failed append is logged, the change
        stands) and serve the new version here now (other processes pick it up by polling)."""
        if self.audit is not None:
            from riskguard.adapters.ml.registry import audit_entry

            entry = audit_entry(record)
            try:
                await self.audit.append_one(actor=actor, **entry)
            except Exception as exc:
                structlog.get_logger("riskguard.models").error(
                    "audit_append_failed", action=entry["action"], error_type=type(exc).__name__
                )
        try:
            await self.engines.refresh()
        except Exception as exc:  # the poller retries
            structlog.get_logger("riskguard.models").warning(
                "model_refresh_deferred", error_type=type(exc).__name__
            )

    def _build_after_decision(self) -> None:
        """Alerts, webhooks and the outbox dispatcher, on the decision store's engine."""
        from riskguard.adapters.sql.alerts import SqlAlertStore
        from riskguard.adapters.webhooks.sealing import SecretBox
        from riskguard.adapters.webhooks.service import WebhookService
        from riskguard.adapters.webhooks.store import WebhookStore
        from riskguard.adapters.webhooks.urls import UrlPolicy
        from riskguard.services.alerts import AlertService

        settings = self.settings
        engine = getattr(self.store, "engine", None)
        if engine is None:
            self.alerts = AlertService(SqlAlertStore.from_url(settings.database_url))
            webhook_store = WebhookStore.from_url(settings.database_url)
        else:
            self.alerts = AlertService(SqlAlertStore(engine))
            webhook_store = WebhookStore(engine)
        self.webhooks = WebhookService(
            webhook_store, SecretBox(settings.secret), UrlPolicy.for_environment(settings.env)
        )
        self.dispatcher: Any = None
        self._dispatching: asyncio.Task[None] | None = None
        self.audit = build_audit(settings)
        if self.audit is not None:
            audit = self.audit

            async def audit_change(
                tenant_id: str, actor: str, action: str, body: Mapping[str, Any]
            ) -> None:
                await audit.append_one(action=action, actor=actor, body=body, tenant_id=tenant_id)

            self.rules.audit = audit_change

    def _build_dispatcher(self) -> Any:
        from riskguard.adapters.webhooks.dispatcher import Dispatcher, DispatcherConfig
        from riskguard.adapters.webhooks.urls import UrlPolicy
        from riskguard.services.consumers import AlertsConsumer

        settings = self.settings
        publishers: list[Any] = [AlertsConsumer(self.alerts)]
        if self.audit is not None:
            from riskguard.services.consumers import AuditConsumer

            publishers.append(AuditConsumer(self.audit))
        if settings.redis_url is not None:
            from riskguard.adapters.streams.redis_streams import RedisStreamPublisher

            publishers.append(
                RedisStreamPublisher(
                    settings.redis_url.get_secret_value(),
                    key_prefix=settings.stream_prefix,
                    maxlen=settings.stream_maxlen,
                )
            )
        if settings.nats_url is not None:
            from riskguard.adapters.streams.jetstream import JetStreamPublisher

            publishers.append(JetStreamPublisher(settings.nats_url))
        config = DispatcherConfig(url_policy=UrlPolicy.for_environment(settings.env))
        return Dispatcher(
            self.webhooks.store, self.webhooks.box, config=config, publishers=publishers
        )

    async def start(self, *, decides: bool = True) -> None:
        """Open the stores and start the background tasks. ``decides=False`` (``riskguard
        worker``): no rulesets are compiled nor polled for, as nothing here decides."""
        if self.settings.auto_migrate:
            from riskguard.adapters.sql.migrate import upgrade

            await asyncio.to_thread(upgrade, self.settings.database_url)
        await self.store.start()
        if self.audit is not None:
            await self.audit.start()
        if decides:
            try:
                await self.engines.refresh()
            except DependencyUnavailable:
                structlog.get_logger("riskguard").warning("ruleset_load_deferred")
            self._poller = asyncio.create_task(self.engines.poll(self.settings.ruleset_poll_s))
        if self.settings.outbox and self.settings.dispatcher:
            self.dispatcher = self._build_dispatcher()
            self._dispatching = asyncio.create_task(
                self.dispatcher.run(), name="riskguard-dispatcher"
            )

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.dispatcher is not None:
            self.dispatcher.stop()
            if self._dispatching is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._dispatching, _STOP_DISPATCHER_S)
            await self.dispatcher.close()
        if self.audit is not None:
            await self.audit.close()
        await self.store.close()
        await self.alerts.close()
        await self.webhooks.close()
        await self.state.close()

    async def check_dependencies(self) -> dict[str, CheckOut]:
        async def check(name: str, ping: Any) -> tuple[str, CheckOut]:
            started = time.perf_counter()
            try:
                await asyncio.wait_for(ping(), _CHECK_TIMEOUT_S)
            except (DependencyUnavailable, TimeoutError, OSError) as exc:
                self.metrics.dependency_up.labels(name).set(0)
                error = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
                return name, CheckOut(ok=False, error=error)
            self.metrics.dependency_up.labels(name).set(1)
            ms = round((time.perf_counter() - started) * 1000.0, 3)
            return name, CheckOut(ok=True, latency_ms=ms)

        results = await asyncio.gather(
            check("database", self.store.ping), check("state_store", self.state.ping)
        )
        return dict(results)


def build_app(settings: Settings) -> Any:
    """The ASGI application for ``settings``."""
    from riskguard.adapters.http.app import create_app

    configure_logging(settings)
    return create_app(Container(settings))


def app_from_env() -> Any:
    """Factory for uvicorn (``riskguard serve``): settings from the environment."""
    from riskguard.settings import load_settings

    return build_app(load_settings())


async def provision(
    store: DecisionStore, secret: bytes, name: str, roles: tuple[str, ...] = ("admin", "ingest")
) -> tuple[str, dict[str, str]]:
    """A new tenant with its first ruleset and one key per role: (tenant id, role -> key)."""
    from riskguard.services.auth import create_tenant, new_key

    tenant = await create_tenant(store, name)
    await RulesService(store, EngineCache(store)).bootstrap(tenant.id)
    keys = {}
    for role in roles:
        row, plaintext = new_key(tenant.id, role, secret)  # type: ignore[arg-type]
        await store.create_key(row)
        keys[role] = plaintext
    return tenant.id, keys

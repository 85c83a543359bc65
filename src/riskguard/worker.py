"""``riskguard worker``: what follows a decision, in its own process.

Every stored decision leaves an outbox message in the same transaction (docs/webhooks.md). A
dispatcher claims those messages and does the rest: opens alerts, appends the tamper-evident
audit log, delivers webhooks and publishes CloudEvents to Redis Streams / NATS JetStream. By
default each ``riskguard serve`` process runs one beside its HTTP handlers; with
``RISKGUARD_DISPATCHER=false`` on the service, that work moves here, so the service's CPU goes
to deciding and the after-decision work scales (and is restarted) on its own.

Several workers, and service processes that still dispatch, share the outbox safely: outbox
claims are row locks taken with ``FOR NO KEY UPDATE SKIP LOCKED`` on PostgreSQL (webhook
deliveries and SQLite claims are leases), and the audit log's writers
take its advisory lock. The worker is configured by the same ``RISKGUARD_*`` variables as the
service (the database, Redis, NATS, the audit log's key and the service secret that unseals
webhook secrets) and runs until SIGTERM or SIGINT, finishing the work in hand.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from typing import Any

import structlog
import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"riskguard: {message}", err=True)
    return typer.Exit(2)


async def run_worker(settings: Any, stop: asyncio.Event | None = None) -> None:
    """Run the dispatcher of ``settings`` (outbox and dispatcher forced on) until ``stop`` is
    set, or SIGTERM/SIGINT when ``stop`` is not given."""
    from riskguard.wiring import Container

    container = Container(settings.model_copy(update={"outbox": True, "dispatcher": True}))
    stopping = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if stop is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
            handled.append(sig)
    log = structlog.get_logger("riskguard.worker")
    try:
        await container.start(decides=False)
        if settings.gc_tuning:  # as the service does after its start-up (riskguard.gc_tuning)
            from riskguard.gc_tuning import tune_gc

            tune_gc()
        log.info(
            "worker_started",
            publishers=_publisher_names(container),
            gc_frozen=gc.get_freeze_count(),
        )
        await stopping.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await container.stop()
        dispatcher = container.dispatcher
        if dispatcher is not None:
            log.info(
                "worker_stopped",
                delivered=dispatcher.delivered,
                published=dispatcher.published,
                dead=dispatcher.dead,
            )


def _publisher_names(container: Any) -> list[str]:
    dispatcher = container.dispatcher
    return [p.name for p in getattr(dispatcher, "_publishers", ())]


def worker() -> None:
    """Run the after-decision worker: the outbox dispatcher (alerts, audit log, webhooks,
    event streams) outside the service processes (configured by RISKGUARD_* variables)."""
    from riskguard.settings import SettingsError, load_settings
    from riskguard.wiring import configure_logging

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise _fail(f"invalid settings: {exc}") from None
    if settings.audit:
        from riskguard.adapters.audit.keys import AuditKeyError, AuditSettings, load_signer

        try:
            load_signer(AuditSettings())
        except AuditKeyError as exc:
            raise _fail(f"audit log: {exc}") from None
    if settings.auto_migrate:
        from riskguard.adapters.sql.migrate import upgrade

        try:
            upgrade(settings.database_url)
        except Exception as exc:
            raise _fail(f"cannot migrate the database: {type(exc).__name__}") from None
    configure_logging(settings, stream=sys.stderr)
    import uvloop

    from riskguard.ports import DependencyUnavailable

    try:  # on uvloop, as the service (uvicorn) and the gateway run
        uvloop.run(run_worker(settings.model_copy(update={"auto_migrate": False})))
    except DependencyUnavailable as exc:
        raise _fail(f"a dependency is unavailable: {exc}") from None

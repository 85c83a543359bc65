"""Alembic environment for riskguard: async engines for SQLite and PostgreSQL.

Built by :mod:`riskguard.adapters.sql.migrate` (no alembic.ini): the database URL arrives in
``config.attributes["url"]``. Upgrades are serialised across processes: on PostgreSQL by a
transaction-scoped advisory lock taken before Alembic reads the current revision, on SQLite by
``BEGIN IMMEDIATE`` (the database's write lock), so replicas starting at once migrate once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection

from riskguard.adapters.sql.engines import make_engine
from riskguard.adapters.sql.tables import metadata

# pg_advisory_xact_lock key: "riskgmig" as a signed 64-bit integer
ADVISORY_LOCK_KEY = int.from_bytes(b"riskgmig", "big", signed=True)

config = context.config


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=sqlite,
        compare_type=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
        context.run_migrations()


def _sqlite_manual_transactions(engine: Any) -> None:
    """Let SQLite run DDL inside one transaction that holds the write lock from its start."""

    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


async def _run_async(url: str) -> None:
    engine = make_engine(url, null_pool=True)
    if engine.dialect.name == "sqlite":
        _sqlite_manual_transactions(engine)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=config.attributes.get("url") or config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a synchronous Connection handed in by the caller
        _run(connection)
        return
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: build the Config with riskguard's migrate module")
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Async engines for both dialects, with the connection settings every use shares.

SQLite: every new connection gets ``journal_mode=WAL`` (readers never block the writer),
``synchronous=FULL`` (a commit survives power loss; group commit pays that fsync once per batch),
``busy_timeout=5000`` and ``foreign_keys=ON``.

PostgreSQL (asyncpg): a 5 s connect timeout and a statement timeout, so a database that is down
or unresponsive turns into an error within seconds instead of a hang. The decision store's
group-commit writer uses a plain asyncpg connection with the same settings
(:func:`asyncpg_connect_kwargs`).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

from riskguard.adapters.sql.urls import dialect_of, is_memory, normalize

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 15.0
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


def error_kind(exc: BaseException) -> str:
    """The class name of the driver's own exception (SQLAlchemy's asyncpg adapter wraps it),
    for messages: never the exception's text, which can echo connection parameters."""
    inner: BaseException = getattr(exc, "orig", None) or exc
    if inner.__cause__ is not None:
        inner = inner.__cause__
    return type(inner).__name__


def is_db_error(exc: BaseException) -> bool:
    """A failure of the database or the way to it (drivers' own errors included)."""
    if isinstance(exc, (SQLAlchemyError, OSError, TimeoutError, sqlite3.Error)):
        return True
    return type(exc).__module__.startswith(("asyncpg", "aiosqlite"))


def _pg_connect_args() -> dict[str, Any]:
    return {
        "timeout": CONNECT_TIMEOUT_S,
        "command_timeout": COMMAND_TIMEOUT_S,
        "server_settings": {"application_name": "riskguard"},
    }


def asyncpg_connect_kwargs(engine: AsyncEngine) -> dict[str, Any]:
    """Keyword arguments of ``asyncpg.connect()`` for the database of a PostgreSQL ``engine``:
    the engine's own translation of its URL (host, port, user, password, database, ssl, ...)
    plus the connect and statement timeouts every connection gets."""
    _args, kwargs = engine.dialect.create_connect_args(engine.url)
    for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        kwargs.pop(adapter_only, None)
    kwargs.update(_pg_connect_args())
    return dict(kwargs)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__"):  # any Mapping
        return {k: obj[k] for k in obj}
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    """JSON text of ``value`` (orjson; mappings, sets and tuples allowed)."""
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS).decode()


def dumps_bytes(value: Any) -> bytes:
    """:func:`dumps` as UTF-8 bytes (no decode, for a driver that sends bytes as they are)."""
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS)


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    null_pool: bool = False,
) -> AsyncEngine:
    """An engine for ``url`` (any form :func:`urls.normalize` accepts)."""
    normalized = normalize(url)
    dialect = dialect_of(url)
    kwargs: dict[str, Any] = {
        "json_serializer": dumps,
        "json_deserializer": loads,
    }
    if dialect == "postgresql":
        kwargs["connect_args"] = _pg_connect_args()
    else:
        kwargs["connect_args"] = {"timeout": 5.0}
    if null_pool:
        kwargs["poolclass"] = NullPool
    elif is_memory(url):
        # One connection, kept and never shared by two callers at once: an in-memory
        # database lives and dies with its connection.
        kwargs.update(
            poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0, pool_timeout=30.0
        )
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=10.0)
    engine = create_async_engine(normalized, **kwargs)
    if dialect == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine

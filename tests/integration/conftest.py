"""Real dependencies for integration tests: PostgreSQL, Redis, SQLite files, loopback ports.

PostgreSQL and Redis must be reachable (``make test`` starts them when installed but stopped);
when one is not, the run fails here, loudly — an integration test is never skipped into green.
Each test session gets its own PostgreSQL database (dropped at the end) and its own Redis key
prefix, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

PG_HOST = os.environ.get("RISKGUARD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("RISKGUARD_TEST_PG_PORT", "5432"))
PG_ADMIN_DB = os.environ.get("RISKGUARD_TEST_PG_DB", "test")
PG_USER = os.environ.get("RISKGUARD_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("RISKGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Servers in this process read the audit key's path from the environment: one test key, out
# of the checkout, so every server of the session signs checkpoints with the same key.
AUDIT_KEY = os.path.join(tempfile.gettempdir(), "riskguard-tests-audit.key")
os.environ.setdefault("RISKGUARD_AUDIT_SIGNING_KEY", AUDIT_KEY)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_ADMIN_DB, timeout=10
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this session (SQLAlchemy asyncpg URL)."""
    if not _reachable(PG_HOST, PG_PORT):
        pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} (run `make services`)")
    name = f"riskguard_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    if not _reachable(PG_HOST, PG_PORT):
        pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} (run `make services`)")
    name = f"riskguard_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis (tests isolate themselves with a per-session key prefix)."""
    from urllib.parse import urlparse

    parsed = urlparse(REDIS_URL)
    if not _reachable(parsed.hostname or "127.0.0.1", parsed.port or 6379):
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (run `make services`)")
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix unique to this test session; its keys (servers' state, event streams,
    rate limits: everything the session wrote under it) are deleted at the end."""
    prefix = f"rgtest{uuid.uuid4().hex[:8]}"
    yield prefix
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    except redis.RedisError:
        pass  # Redis went away: the tests that needed it have failed already
    finally:
        client.close()


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """A new SQLite database file (SQLAlchemy aiosqlite URL)."""
    return f"sqlite+aiosqlite:///{os.path.join(tmp_path, 'riskguard.db')}"

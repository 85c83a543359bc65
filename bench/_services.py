"""The local PostgreSQL and Redis the benchmarks use (the same defaults and
``RISKGUARD_TEST_*`` overrides as the test suite), shared by bench/http.py and
bench/gateway.py."""

from __future__ import annotations

import os
from typing import Final

PG_HOST: Final = os.environ.get("RISKGUARD_TEST_PG_HOST", "127.0.0.1")
PG_PORT: Final = int(os.environ.get("RISKGUARD_TEST_PG_PORT", "5432"))
PG_ADMIN_DB: Final = os.environ.get("RISKGUARD_TEST_PG_DB", "test")
PG_USER: Final = os.environ.get("RISKGUARD_TEST_PG_USER", "postgres")
REDIS_URL: Final = os.environ.get("RISKGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def pg_admin(sql: str) -> None:
    """Run ``sql`` (CREATE / DROP DATABASE) on the admin database."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_ADMIN_DB, timeout=10
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()

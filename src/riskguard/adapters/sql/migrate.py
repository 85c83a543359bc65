"""Schema migrations, run programmatically (``riskguard db upgrade`` and auto-migrate on start).

No alembic.ini is needed: :func:`alembic_config` builds the Config in code, with the scripts in
this package's ``migrations`` directory and the URL passed as an attribute (never through
ConfigParser, whose ``%`` interpolation would mangle URL-encoded passwords). Upgrades from an
empty database to head; a second upgrade is a no-op; several processes upgrading at once are
serialised (see ``migrations/env.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from riskguard.adapters.sql.engines import error_kind, is_db_error, make_engine
from riskguard.adapters.sql.urls import is_memory, normalize, redact, sqlite_path
from riskguard.ports import DependencyUnavailable

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"

T = TypeVar("T")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config for riskguard's migrations (``url`` may be None for offline uses)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        config.attributes["url"] = normalize(url)
    return config


def head() -> str:
    """The newest revision the code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def upgrade(url: str) -> str:
    """Migrate the database at ``url`` to head (creating a SQLite file and its directory if
    needed); returns the revision it is at. Raises :class:`DependencyUnavailable` when the
    database cannot be reached. In-memory SQLite: a no-op returning head."""
    if is_memory(url):
        # each connection has its own in-memory database: the store creates the schema of
        # head in the one it keeps, so there is nothing to migrate from outside
        return head()
    path = sqlite_path(url)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    _outside_event_loop(lambda: _guarded(url, lambda: command.upgrade(alembic_config(url), "head")))
    revision = current(url)
    assert revision is not None
    return revision


def current(url: str) -> str | None:
    """The revision the database is at (None for an empty or missing database)."""
    path = sqlite_path(url)
    if path and not Path(path).exists():
        return None
    return _outside_event_loop(lambda: _guarded(url, lambda: asyncio.run(_current(url))))


async def _current(url: str) -> str | None:
    engine = make_engine(url, null_pool=True)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


def _guarded(url: str, work: Callable[[], T]) -> T:
    try:
        return work()
    except Exception as exc:
        if is_db_error(exc):
            raise DependencyUnavailable(
                f"database {redact(url)} is unavailable ({error_kind(exc)})"
            ) from None
        raise


def _outside_event_loop(work: Callable[[], T]) -> T:
    """Run ``work`` here, or on a helper thread when this thread already runs an event loop
    (Alembic's async environment needs ``asyncio.run``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="riskguard-migrate") as pool:
        return pool.submit(work).result()

"""Database URLs: normalise what operators write to what SQLAlchemy's async drivers need, and
redact passwords before a URL appears in a message or a log line."""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

_PG_SCHEMES = ("postgres", "postgresql", "postgresql+asyncpg")
_SQLITE_SCHEMES = ("sqlite", "sqlite+aiosqlite")
_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.\-]+://[^:/@?#]*:)[^@/?#]*(?P<tail>@)", re.IGNORECASE)


def parse(url: str) -> URL:
    """The SQLAlchemy URL of ``url`` with an async driver:

    - ``postgres://`` / ``postgresql://`` -> ``postgresql+asyncpg://`` (a libpq ``sslmode``
      query parameter becomes asyncpg's ``ssl``),
    - ``sqlite:///path`` -> ``sqlite+aiosqlite:///path``.

    Raises ValueError for anything else (the message never contains the password).
    """
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL: {redact(url)!r}") from None
    scheme = parsed.drivername.lower()
    if scheme in _PG_SCHEMES:
        parsed = parsed.set(drivername="postgresql+asyncpg")
        query = dict(parsed.query)
        if "sslmode" in query and "ssl" not in query:
            query["ssl"] = query.pop("sslmode")
            parsed = parsed.set(query=query)
        return parsed
    if scheme in _SQLITE_SCHEMES:
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(
        f"unsupported database {redact(url)!r}: use sqlite:///<path> or postgresql://..."
    )


def normalize(url: str) -> str:
    """``parse(url)`` as a string, password included (for engines, never for messages)."""
    return parse(url).render_as_string(hide_password=False)


def dialect_of(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    return parse(url).get_backend_name()


def is_memory(url: str) -> bool:
    """An in-memory SQLite database (``sqlite://`` or ``sqlite:///:memory:``)."""
    parsed = parse(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for PostgreSQL and in-memory databases)."""
    parsed = parse(url)
    if parsed.get_backend_name() != "sqlite" or is_memory(url):
        return None
    database = parsed.database or ""
    return None if database.startswith("file:") else database


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe for messages and logs)."""
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError):
        return _PASSWORD.sub(r"\g<head>***\g<tail>", url)
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=parsed.password is not None)

"""Decision records, tenants, API keys and rulesets in SQLite (embedded) or PostgreSQL.

- :mod:`.tables` — the schema (SQLAlchemy Core);
- :mod:`.store` — :class:`SqlDecisionStore`, the ``DecisionStore`` with group-committed writes;
- :mod:`.migrate` — Alembic migrations run in code (``riskguard db upgrade``);
- :mod:`.urls` — URL normalisation and password redaction;
- :mod:`.engines` — async engines with the per-dialect connection settings.
"""

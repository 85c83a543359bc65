"""The operator's commands against real databases: db upgrade, tenants create, keys create."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.integration.service import SECRET, Backend, Server, transaction

pytestmark = pytest.mark.integration


def riskguard(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env.update(RISKGUARD_DATABASE_URL=database_url, RISKGUARD_SECRET_KEY=SECRET)
    return subprocess.run(
        [sys.executable, "-m", "riskguard", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_db_upgrade_tenants_and_keys_from_an_empty_database(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'cli.db'}"  # plain URLs are accepted
    else:
        url = request.getfixturevalue("fresh_pg_url").replace("postgresql+asyncpg", "postgresql")
    upgraded = riskguard(url, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "is at revision" in upgraded.stdout
    assert "password" not in upgraded.stdout
    again = riskguard(url, "db", "upgrade")
    assert again.returncode == 0
    assert again.stdout.split("revision")[-1] == upgraded.stdout.split("revision")[-1]

    created = riskguard(url, "tenants", "create", "acme")
    assert created.returncode == 0, created.stderr
    tenant_id = created.stdout.split()[1]
    assert tenant_id.startswith("t_")
    duplicate = riskguard(url, "tenants", "create", "acme")
    assert duplicate.returncode == 2
    assert "Traceback" not in duplicate.stderr

    key = riskguard(url, "keys", "create", "--tenant", "acme", "--role", "ingest")
    assert key.returncode == 0, key.stderr
    plaintext = key.stdout.strip()
    assert plaintext.startswith("rg_")
    assert "shown once" in key.stderr
    assert (
        riskguard(url, "keys", "create", "--tenant", "nobody", "--role", "ingest").returncode == 2
    )
    assert riskguard(url, "keys", "create", "--tenant", "acme", "--role", "root").returncode == 2

    backend = Backend(kind, url.replace("sqlite:///", "sqlite+aiosqlite:///"))
    with Server(backend, free_port(), log_path=tmp_path / "server.log") as server:
        answer = httpx.post(
            server.url + "/v1/decisions",
            json=transaction("cli-1"),
            headers={"Authorization": f"Bearer {plaintext}"},
        )
        assert answer.status_code == 200, answer.text


def test_serve_refuses_unusable_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKGUARD_")}
    env.update(RISKGUARD_ENV="production", RISKGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    refused = subprocess.run(
        [sys.executable, "-m", "riskguard", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "RISKGUARD_SECRET_KEY" in refused.stderr
    assert "RISKGUARD_TRUSTED_HOSTS" in refused.stderr
    assert "Traceback" not in refused.stderr
    env.update(RISKGUARD_ENV="development", RISKGUARD_POLICIES="{not json")
    bad = subprocess.run(
        [sys.executable, "-m", "riskguard", "serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "RISKGUARD_POLICIES" in bad.stderr

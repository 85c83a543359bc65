"""A real ``riskguard serve`` process on a loopback port, and tenants provisioned for it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from riskguard.adapters.sql.migrate import upgrade
from riskguard.adapters.sql.store import SqlDecisionStore
from riskguard.settings import load_settings
from riskguard.wiring import provision
from tests.integration.conftest import AUDIT_KEY

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-tests-secret-key-0123456789abcdef"


@dataclass
class Backend:
    """Where a server keeps its records and state."""

    name: str
    database_url: str
    redis_url: str | None = None
    redis_prefix: str = "rg"
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def stream_prefix(self) -> str:
        """Where the server's event streams go: under its key prefix."""
        return f"{self.redis_prefix}:"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RISKGUARD_") and k != "PYTHONWARNINGS"
        }
        env.update(
            RISKGUARD_DATABASE_URL=self.database_url,
            RISKGUARD_SECRET_KEY=SECRET,
            RISKGUARD_REDIS_PREFIX=self.redis_prefix,
            RISKGUARD_RULESET_POLL_S="0.5",
            RISKGUARD_LOG_LEVEL="warning",
            # development makes the audit signing key on first use: not in the checkout
            RISKGUARD_AUDIT_SIGNING_KEY=AUDIT_KEY,
        )
        if self.redis_url is not None:
            env["RISKGUARD_REDIS_URL"] = self.redis_url
            # the event streams under the server's prefix too, so that they go with its keys
            env["RISKGUARD_STREAM_PREFIX"] = self.stream_prefix
        env.update(self.extra_env)
        return env


class Server:
    """``python -m riskguard serve`` as a child process; ``url`` once it answers."""

    def __init__(self, backend: Backend, port: int, *, log_path: Path | None = None) -> None:
        self.backend = backend
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Server:
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "riskguard", "serve", "--port", str(self.port)],
                env=self.backend.env(),
                cwd=ROOT,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if out is not None else subprocess.DEVNULL,
            )
        finally:
            if out is not None:
                out.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not answer /healthz in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class TenantKeys:
    tenant_id: str
    admin: str
    ingest: str
    read: str

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


def provision_tenant(backend: Backend, name: str) -> TenantKeys:
    """Migrate the backend's database and create a tenant with one key per role."""
    upgrade(backend.database_url)
    settings = load_settings(database_url=backend.database_url, secret_key=SECRET)

    async def work() -> tuple[str, dict[str, str]]:
        store = SqlDecisionStore(backend.database_url)
        await store.start()
        try:
            return await provision(store, settings.secret, name, ("admin", "ingest", "read"))
        finally:
            await store.close()

    tenant_id, keys = asyncio.run(work())
    return TenantKeys(tenant_id, keys["admin"], keys["ingest"], keys["read"])


def count_decisions(database_url: str, tenant_id: str | None = None) -> int:
    async def work() -> int:
        store = SqlDecisionStore(database_url)
        await store.start()
        try:
            return await store.count(tenant_id)
        finally:
            await store.close()

    return asyncio.run(work())


def transaction(
    event_id: str, account: str = "acct-1", amount: float = 25.0, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": event_id,
        "type": "transaction",
        "data": {
            "account_id": account,
            "counterparty_id": "merchant-9",
            "amount": amount,
            "currency": "EUR",
        },
        "context": {
            "ip": "196.25.1.9",
            "device_id": "d-77",
            "geo": {"country": "ZA", "lat": -26.2, "lon": 28.0},
        },
    }
    body.update(extra)
    return body

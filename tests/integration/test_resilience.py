"""Dependencies failing under a real server: Redis stopped and back, and kill -9 under load."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.integration.service import (
    Backend,
    Server,
    provision_tenant,
    transaction,
)

pytestmark = pytest.mark.integration


class OwnRedis:
    """A redis-server of this test's own on a free loopback port (the shared one stays up)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (the Debian package redis-server)")
        self.binary = binary
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def login(event_id: str, user: str) -> dict[str, object]:
    return {
        "event_id": event_id,
        "type": "login",
        "data": {"user_id": user, "success": True},
        "context": {"ip": "10.1.2.3", "device_id": "d-1"},
    }


def test_degraded_mode_when_redis_stops_and_recovery_when_it_returns(
    own_redis: OwnRedis, pg_url: str, tmp_path: Path
) -> None:
    backend = Backend("postgres+own-redis", pg_url, redis_url=own_redis.url, redis_prefix="deg")
    keys = provision_tenant(backend, f"degraded-{uuid.uuid4().hex[:6]}")
    headers = keys.headers("ingest")
    with Server(backend, free_port(), log_path=tmp_path / "server.log") as server:
        url = server.url + "/v1/decisions"
        healthy = httpx.post(url, json=transaction(f"h-{uuid.uuid4().hex}"), headers=headers)
        assert healthy.status_code == 200
        assert healthy.json()["degraded"] is False
        assert httpx.get(server.url + "/readyz").json()["status"] == "ready"

        own_redis.stop()
        started = time.monotonic()
        payment = httpx.post(
            url, json=transaction(f"p-{uuid.uuid4().hex}"), headers=headers, timeout=10
        )
        took = time.monotonic() - started
        assert payment.status_code == 200, payment.text
        body = payment.json()
        assert body["degraded"] is True
        assert body["outcome"] == "review"  # transactions fail closed by default
        assert [r["code"] for r in body["reasons"]] == ["DEPENDENCY_UNAVAILABLE"]
        assert took < 2.0
        signin = httpx.post(
            url, json=login(f"l-{uuid.uuid4().hex}", "u-1"), headers=headers, timeout=10
        )
        assert signin.json()["outcome"] == "allow"  # logins fail open
        assert signin.json()["reasons"][0]["code"] == "DEPENDENCY_UNAVAILABLE"
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["status"] == "degraded"
        assert ready["checks"]["state_store"]["ok"] is False
        assert ready["checks"]["database"]["ok"] is True
        assert httpx.get(server.url + "/readyz", params={"strict": "true"}).status_code == 503
        # the degraded decision is stored and replays like any other
        replay = httpx.post(url, json=transaction(body["event_id"]), headers=headers)
        assert replay.json()["decision_id"] == body["decision_id"]
        assert replay.json()["replayed"] is True
        metrics = httpx.get(server.url + "/metrics").text
        assert 'riskguard_degraded_decisions_total{dependency="state"' in metrics

        own_redis.start()  # an empty Redis: the script must be loaded again
        recovered = None
        for _ in range(50):
            recovered = httpx.post(url, json=transaction(f"r-{uuid.uuid4().hex}"), headers=headers)
            if recovered.json()["degraded"] is False:
                break
            time.sleep(0.1)
        assert recovered is not None
        assert recovered.json()["degraded"] is False
        assert httpx.get(server.url + "/readyz").json()["status"] == "ready"


def test_kill_9_under_load_loses_no_answered_decision(
    pg_url: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    backend = Backend(
        "postgres+redis", pg_url, redis_url=redis_url, redis_prefix=redis_prefix + "k9"
    )
    keys = provision_tenant(backend, f"crash-{uuid.uuid4().hex[:6]}")
    port = free_port()
    answered: dict[str, str] = {}  # event id -> decision id, for every 200
    server = Server(backend, port, log_path=tmp_path / "server.log").start()

    async def load(stop_after: float) -> None:
        async with httpx.AsyncClient(
            base_url=server.url, headers=keys.headers("ingest"), timeout=5
        ) as client:
            deadline = time.monotonic() + stop_after

            async def worker(n: int) -> None:
                i = 0
                while time.monotonic() < deadline:
                    event_id = f"crash-{n}-{i}-{uuid.uuid4().hex[:6]}"
                    i += 1
                    try:
                        r = await client.post(
                            "/v1/decisions", json=transaction(event_id, account=f"acct-{n % 7}")
                        )
                    except httpx.HTTPError:
                        continue
                    if r.status_code == 200:
                        answered[event_id] = r.json()["decision_id"]

            await asyncio.gather(*(worker(n) for n in range(16)))

    async def load_and_kill() -> None:
        task = asyncio.create_task(load(6.0))
        await asyncio.sleep(2.0)
        server.kill9()
        await task

    asyncio.run(load_and_kill())
    assert len(answered) > 50, "the load did not get going before the kill"

    with Server(backend, port, log_path=tmp_path / "server2.log") as restarted:

        async def fetch_all() -> dict[str, str]:
            found: dict[str, str] = {}
            async with httpx.AsyncClient(
                base_url=restarted.url, headers=keys.headers("read"), timeout=10
            ) as client:
                cursor = None
                while True:
                    params = {"limit": 500}
                    if cursor:
                        params["cursor"] = cursor
                    page = (await client.get("/v1/decisions", params=params)).json()
                    for item in page["items"]:
                        assert item["event_id"] not in found, "a decision stored twice"
                        found[item["event_id"]] = item["decision_id"]
                    cursor = page["next_cursor"]
                    if not cursor:
                        return found

        stored = asyncio.run(fetch_all())
    missing = [e for e in answered if e not in stored]
    assert not missing, f"{len(missing)} answered decisions lost of {len(answered)}"
    assert all(stored[e] == d for e, d in answered.items())
    print(f"kill -9: {len(answered)} answered, {len(stored)} stored, 0 lost")

"""GCRA rate limiting: the in-memory and the Redis limiter answer alike (hypothesis, against a
real Redis, time passed in explicitly), the 429 / ``Retry-After`` values, Redis keys and
expiry, the script's NOSCRIPT fallback, the memory limiter's bounds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.adapters.gateway.ratelimit import (
    GCRA_SCRIPT,
    GcraScript,
    MemoryRateLimiter,
    RateDecision,
    RateLimit,
    RateLimiter,
    RedisRateLimiter,
    redis_key,
)
from riskguard.ports import DependencyUnavailable

from .conftest import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
T0 = 1_790_000_000_000_000  # microseconds since the epoch: the magnitude production sees


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(scope="module")
def prefix(redis_prefix: str) -> str:
    """A key prefix of this module's own (deleted with the session's: conftest)."""
    return f"{redis_prefix}.rl"


def redis_limiter(url: str, prefix: str, script: GcraScript = GCRA_SCRIPT) -> RedisRateLimiter:
    """A Redis limiter under a key prefix of its own."""
    return RedisRateLimiter(
        aioredis.Redis.from_url(url),
        prefix=f"{prefix}.{uuid.uuid4().hex[:8]}",
        timeout_s=2.0,
        script=script,
    )


# --------------------------------------------------------------------------------------------
# Memory and Redis: the same answers

LIMITS = st.builds(
    RateLimit,
    # intervals of 1 s to 100 s: a Redis key (expiring in real time at its horizon) then
    # outlives any example, whose own time is made up
    rate_per_s=st.one_of(st.floats(0.01, 1.0), st.sampled_from([0.01, 0.3, 1.0, 1 / 3])),
    burst=st.integers(1, 12),
)
STEPS = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 3_000_000), st.integers(0, 400_000_000), st.just(0)),
        st.integers(0, 3),  # which (service, route)
        st.integers(0, 2),  # which limit
    ),
    min_size=1,
    max_size=50,
)


@settings(max_examples=60, deadline=None)
@given(limits=st.lists(LIMITS, min_size=1, max_size=3), steps=STEPS)
def test_memory_and_redis_answer_alike(
    redis_url: str, prefix: str, limits: list[RateLimit], steps: list[tuple[int, int, int]]
) -> None:
    async def main() -> None:
        memory = MemoryRateLimiter()
        shared = redis_limiter(redis_url, prefix)
        now = T0
        try:
            for i, (dt, who, which) in enumerate(steps):
                now += dt
                service, route = f"svc-{who % 2}", f"/v1/r{who}"
                limit = limits[which % len(limits)]
                expected = memory.check(service, route, limit, now_us=now)
                got = await shared.hit(service, route, limit, now_us=now)
                assert got == expected, f"step {i}: {limit} at {now}"
        finally:
            await shared.close()

    run(main())


def test_two_redis_clients_taking_turns_match_memory(redis_url: str, prefix: str) -> None:
    """Two limiters on one prefix (think two gateway replicas) share one state."""
    limit = RateLimit(rate_per_s=0.5, burst=4)

    async def main() -> None:
        memory = MemoryRateLimiter()
        ns = f"{prefix}.{uuid.uuid4().hex[:8]}"
        replicas = [
            RedisRateLimiter(aioredis.Redis.from_url(redis_url), prefix=ns, timeout_s=2.0)
            for _ in range(2)
        ]
        try:
            now = T0
            for i in range(40):
                now += (i * 7919) % 1_500_000
                expected = memory.check("svc", "/pay", limit, now_us=now)
                got = await replicas[i % 2].hit("svc", "/pay", limit, now_us=now)
                assert got == expected
        finally:
            for replica in replicas:
                await replica.close()

    run(main())


# --------------------------------------------------------------------------------------------
# 429 and Retry-After


def limiters(redis_url: str, prefix: str) -> list[RateLimiter]:
    return [MemoryRateLimiter(), redis_limiter(redis_url, prefix)]


async def close(limiter: RateLimiter) -> None:
    if isinstance(limiter, RedisRateLimiter):
        await limiter.close()


@pytest.mark.parametrize("kind", [0, 1], ids=["memory", "redis"])
def test_burst_then_429_with_retry_after(redis_url: str, prefix: str, kind: int) -> None:
    limiter = limiters(redis_url, prefix)[kind]
    limit = RateLimit(rate_per_s=10, burst=5)  # one every 100 ms, five at once

    async def hit(at: int, route: str = "/v1/decisions") -> RateDecision:
        return await limiter.hit("svc-a", route, limit, now_us=at)

    async def main() -> None:
        try:
            burst = [await hit(T0) for _ in range(5)]
            assert [d.allowed for d in burst] == [True] * 5
            assert [d.remaining for d in burst] == [4, 3, 2, 1, 0]
            refused = await hit(T0)
            assert refused == RateDecision(False, 5, 0, 100_000, 500_000)
            assert refused.headers() == {
                "RateLimit-Limit": "5",
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": "1",
                "Retry-After": "1",
            }
            assert await hit(T0 + 99_999) == RateDecision(False, 5, 0, 1, 400_001)
            assert (await hit(T0 + 100_000)).allowed  # one interval later: one more
            assert (await hit(T0 + 100_000)).retry_after_us == 100_000
            assert (await hit(T0, "/v1/other")).remaining == 4  # routes are separate keys
            fresh = await hit(T0 + 10_000_000)  # long after: a full burst again
            assert (fresh.allowed, fresh.remaining, fresh.reset_after_us) == (True, 4, 100_000)
            assert "Retry-After" not in fresh.headers()
        finally:
            await close(limiter)

    run(main())


@pytest.mark.parametrize("kind", [0, 1], ids=["memory", "redis"])
def test_retry_after_rounds_up_to_whole_seconds(redis_url: str, prefix: str, kind: int) -> None:
    limiter = limiters(redis_url, prefix)[kind]
    slow = RateLimit(rate_per_s=0.4, burst=2)  # one every 2.5 s

    async def main() -> None:
        try:
            for _ in range(2):
                assert (await limiter.hit("svc-b", "/export", slow, now_us=T0)).allowed
            refused = await limiter.hit("svc-b", "/export", slow, now_us=T0)
            assert (refused.retry_after_us, refused.retry_after_s) == (2_500_000, 3)
            almost = await limiter.hit("svc-b", "/export", slow, now_us=T0 + 2_499_999)
            assert (almost.allowed, almost.retry_after_us, almost.headers()["Retry-After"]) == (
                False,
                1,
                "1",
            )
            assert (await limiter.hit("svc-b", "/export", slow, now_us=T0 + 2_500_000)).allowed
            # other services are not affected by svc-b's limit
            assert (await limiter.hit("svc-c", "/export", slow, now_us=T0)).remaining == 1
        finally:
            await close(limiter)

    run(main())


def test_redis_uses_its_own_clock_by_default(redis_url: str, prefix: str) -> None:
    limit = RateLimit(rate_per_s=1, burst=3)

    async def main() -> None:
        limiter = redis_limiter(redis_url, prefix)
        try:
            answers = [await limiter.hit("svc", "/x", limit) for _ in range(4)]
            assert [a.allowed for a in answers] == [True, True, True, False]
            refused = answers[-1]
            assert 0 < refused.retry_after_us <= 1_000_000
            assert refused.headers()["Retry-After"] == "1"
            assert 2_000_000 < refused.reset_after_us <= 3_000_000
        finally:
            await limiter.close()

    run(main())


def test_keys_are_hash_tagged_and_expire_at_the_horizon(redis_url: str, prefix: str) -> None:
    limit = RateLimit(rate_per_s=0.1, burst=3)  # 10 s interval

    async def main() -> None:
        limiter = redis_limiter(redis_url, prefix)
        client = limiter.client
        try:
            key = redis_key(limiter.prefix, "svc {a}:1", "/v1/pay:x")
            assert key == f"{limiter.prefix}:rl:{{svc%20%7Ba%7D%3A1}}:%2Fv1%2Fpay%3Ax"
            decision = await limiter.hit("svc {a}:1", "/v1/pay:x", limit)
            assert decision.reset_after_us == 10_000_000
            ttl_ms = await client.pttl(key)
            assert 9_000 < ttl_ms <= 10_000
            await limiter.hit("svc {a}:1", "/v1/pay:x", limit)
            assert 19_000 < await client.pttl(key) <= 20_000
            assert int(await client.get(key)) > T0  # the TAT, in microseconds
        finally:
            await limiter.close()

    run(main())


def test_the_script_is_loaded_when_redis_does_not_know_it(redis_url: str, prefix: str) -> None:
    fresh = GcraScript(GCRA_SCRIPT.source + f"\n-- test {uuid.uuid4().hex}\n")
    limit = RateLimit(rate_per_s=1, burst=1)

    async def main() -> None:
        limiter = redis_limiter(redis_url, prefix, script=fresh)
        try:
            assert await limiter.client.script_exists(fresh.sha) == [False]
            assert (await limiter.hit("svc", "/x", limit, now_us=T0)).allowed  # NOSCRIPT, loaded
            assert await limiter.client.script_exists(fresh.sha) == [True]
            assert not (await limiter.hit("svc", "/x", limit, now_us=T0)).allowed  # EVALSHA
        finally:
            await limiter.close()

    run(main())


def test_an_unreachable_redis_is_a_dependency_failure() -> None:
    async def main() -> None:
        limiter = RedisRateLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
        try:
            with pytest.raises(DependencyUnavailable, match="redis rate limiter"):
                await limiter.hit("svc", "/x", RateLimit(1, 1))
        finally:
            await limiter.close()

    run(main())


# --------------------------------------------------------------------------------------------
# The memory limiter's own properties


def test_idle_keys_are_dropped_without_changing_any_answer() -> None:
    limiter = MemoryRateLimiter(max_keys=1_000)
    reference = MemoryRateLimiter(max_keys=1_000_000)
    limit = RateLimit(rate_per_s=100, burst=2)  # a key is idle 20 ms after its last request
    now = T0
    for i in range(20_000):
        now += 1_000
        service = f"svc-{i % 50}"
        route = f"/r{i % 7}"
        assert limiter.check(service, route, limit, now_us=now) == reference.check(
            service, route, limit, now_us=now
        )
        assert len(limiter) <= 1_000
    assert limiter.evicted_active == 0
    assert len(limiter) < 100  # only keys active in the last 20 ms remain


def test_at_capacity_the_least_recently_used_key_starts_afresh() -> None:
    limiter = MemoryRateLimiter(max_keys=3)
    limit = RateLimit(rate_per_s=1, burst=1)
    for route in ("/a", "/b", "/c", "/d"):
        assert limiter.check("svc", route, limit, now_us=T0).allowed
    assert len(limiter) == 3
    assert limiter.evicted_active == 1
    assert limiter.check(
        "svc", "/a", limit, now_us=T0
    ).allowed  # forgotten: a bounded over-allowance
    assert not limiter.check("svc", "/d", limit, now_us=T0).allowed


def test_the_memory_limiter_runs_on_the_monotonic_clock() -> None:
    limiter = MemoryRateLimiter()
    limit = RateLimit(rate_per_s=0.001, burst=2)
    answers = [limiter.check("svc", "/x", limit) for _ in range(3)]
    assert [a.allowed for a in answers] == [True, True, False]
    assert 999_000_000 < answers[-1].retry_after_us <= 1_000_000_000


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0, 1), (-1, 1), (float("nan"), 1), (float("inf"), 1), (1, 0), (1, 1.5), (1e-9, 2), (1, True)],
)
def test_impossible_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"rate_per_s|burst"):
        RateLimit(rate, burst)


def test_the_interval_is_whole_microseconds() -> None:
    assert RateLimit(3, 1).emission_us == 333_333
    assert RateLimit(2_000_000, 1).emission_us == 1  # never 0
    assert RateLimit(0.5, 10).emission_us == 2_000_000

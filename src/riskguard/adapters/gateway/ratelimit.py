"""Rate limiting for the gateway: GCRA per (service, route), in memory or shared in Redis.

**GCRA** (the generic cell rate algorithm, a leaky bucket kept as one timestamp). A limit is a
rate ``r`` per second and a ``burst`` ``b``: the emission interval is ``T = 1/r`` and each key
keeps its theoretical arrival time ``TAT``. A request at ``now`` computes
``new_tat = max(TAT, now) + T``; it is allowed when ``now >= new_tat - b·T`` (then
``TAT = new_tat``), refused otherwise with ``retry_after = new_tat - b·T - now``. So a fresh key
takes ``b`` requests at once and then one every ``T``; ``remaining`` is how many more would be
allowed right now. A key whose TAT has passed is indistinguishable from a fresh key, which is
what makes eviction and expiry free of side effects.

**Integers.** Times are integer microseconds and ``T`` is rounded to whole microseconds
(:class:`RateLimit`). Every quantity stays below 2^53 (``burst·T <= 2^50``), so the Redis
script's Lua doubles compute exactly what Python's integers do — the two implementations answer
identically for the same sequence of (time, key), which the integration tests check against a
real Redis.

**Clocks.** :class:`MemoryRateLimiter` uses the process's monotonic clock (immune to wall-clock
steps; one process, one clock). :class:`RedisRateLimiter` uses the Redis server's ``TIME`` by
default: every gateway replica then measures against one clock, so replicas whose wall clocks
drift apart can neither grant extra requests nor refuse early, and no replica's clock step can
rewind a shared TAT. Both accept an explicit ``now_us`` (tests pass it so runs are
deterministic; a replayer may too).

**Memory.** The in-memory limiter keeps at most ``max_keys`` keys in least-recently-used order:
each check also drops up to two least-recently-used keys whose TAT has passed (no effect on any
answer), and at capacity the least-recently-used key is dropped even if still active — that
key then starts afresh, a bounded over-allowance preferred to refusing new callers. Redis keys
expire at their TAT (``PX``), so idle keys cost nothing there either.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from riskguard.ports import DependencyUnavailable

MAX_HORIZON_US = 2**50  # burst * emission bound that keeps Lua's doubles exact


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate_per_s`` requests per second on average, at most ``burst`` at once."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError("rate_per_s must be a positive number")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError("burst must be an integer >= 1")
        if self.burst * self.emission_us > MAX_HORIZON_US:
            raise ValueError("burst / rate_per_s must stay under about 35 years")

    @property
    def emission_us(self) -> int:
        """The interval between two requests at the average rate, in whole microseconds."""
        return max(1, round(1_000_000 / self.rate_per_s))


@dataclass(frozen=True, slots=True)
class RateDecision:
    """One check's answer; ``*_us`` in microseconds."""

    allowed: bool
    limit: int  # the burst
    remaining: int  # requests that would still be allowed right now
    retry_after_us: int  # 0 when allowed
    reset_after_us: int  # until the key is as fresh as a new one

    @property
    def retry_after_s(self) -> int:
        """``Retry-After`` in whole seconds, rounded up (never 0 for a refusal)."""
        return math.ceil(self.retry_after_us / 1_000_000) if not self.allowed else 0

    def headers(self) -> dict[str, str]:
        """Response headers: ``RateLimit-*`` always, ``Retry-After`` on a refusal (429)."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_after_us / 1_000_000)),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


def gcra_step(
    tat: int | None, now: int, emission: int, burst: int
) -> tuple[RateDecision, int | None]:
    """One GCRA step: the decision and the new TAT to store (None: store nothing)."""
    base = now if tat is None or tat < now else tat
    new_tat = base + emission
    allow_at = new_tat - burst * emission
    if now < allow_at:
        return RateDecision(False, burst, 0, allow_at - now, base - now), None
    return RateDecision(True, burst, (now - allow_at) // emission, 0, new_tat - now), new_tat


class RateLimiter(Protocol):
    async def hit(
        self, service: str, route: str, limit: RateLimit, *, now_us: int | None = None
    ) -> RateDecision:
        """Count one request of ``service`` on ``route`` against ``limit``."""
        ...


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class MemoryRateLimiter:
    """GCRA in this process: O(1) per check, at most ``max_keys`` keys."""

    name = "memory"

    def __init__(self, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self._tats: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.evicted_active = 0  # keys dropped at capacity before their TAT passed

    def __len__(self) -> int:
        return len(self._tats)

    def check(
        self, service: str, route: str, limit: RateLimit, *, now_us: int | None = None
    ) -> RateDecision:
        now = monotonic_us() if now_us is None else now_us
        key = (service, route)
        tats = self._tats
        decision, new_tat = gcra_step(tats.get(key), now, limit.emission_us, limit.burst)
        if new_tat is not None:
            tats[key] = new_tat
            tats.move_to_end(key)
        for _ in range(2):  # drop idle keys from the cold end: invisible to every answer
            oldest = next(iter(tats), None)
            if oldest is None or oldest == key or tats[oldest] > now:
                break
            del tats[oldest]
        if len(tats) > self.max_keys:
            tats.popitem(last=False)
            self.evicted_active += 1
        return decision

    async def hit(
        self, service: str, route: str, limit: RateLimit, *, now_us: int | None = None
    ) -> RateDecision:
        return self.check(service, route, limit, now_us=now_us)


@dataclass(frozen=True, slots=True)
class GcraScript:
    """The Lua source and its SHA-1 (EVALSHA's name for it)."""

    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


GCRA_SCRIPT = GcraScript(Path(__file__).with_name("ratelimit.lua").read_text())


def redis_key(prefix: str, service: str, route: str) -> str:
    """``<prefix>:rl:{<service>}:<route>``, components percent-encoded so that braces and colons
    inside them cannot move the hash tag: all of a service's limits share one cluster slot."""
    return f"{prefix}:rl:{{{quote(service, safe='')}}}:{quote(route, safe='')}"


class RedisRateLimiter:
    """GCRA shared through Redis: one ``EVALSHA`` per check (``SCRIPT LOAD`` on ``NOSCRIPT``).

    Errors, refusals and timeouts raise :class:`~riskguard.ports.DependencyUnavailable`; what to
    answer then (fail open or closed) is the caller's policy.
    """

    name = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "rg",
        timeout_s: float = 0.05,
        script: GcraScript = GCRA_SCRIPT,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.script = script
        self._sha = script.sha

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "rg", timeout_s: float = 0.05) -> RedisRateLimiter:
        return cls(aioredis.Redis.from_url(url), prefix=prefix, timeout_s=timeout_s)

    async def hit(
        self, service: str, route: str, limit: RateLimit, *, now_us: int | None = None
    ) -> RateDecision:
        key = redis_key(self.prefix, service, route)
        args = (limit.emission_us, limit.burst, "" if now_us is None else now_us)
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    reply = await self.client.evalsha(self._sha, 1, key, *args)
                except NoScriptError:
                    await self.client.script_load(self.script.source)
                    reply = await self.client.evalsha(self._sha, 1, key, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise DependencyUnavailable(f"redis rate limiter: {type(exc).__name__}") from None
        allowed, remaining, retry_after, reset_after = (int(v) for v in reply)
        return RateDecision(allowed == 1, limit.burst, remaining, retry_after, reset_after)

    async def close(self) -> None:
        await self.client.aclose()

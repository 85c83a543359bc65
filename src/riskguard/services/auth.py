"""Tenants and API keys: creation, hashing and the per-request check.

A key reads ``rg_<key id>_<secret>``: the id (12 hex) finds the stored row, the secret (32
random bytes, url-safe base64) is checked against its argon2id hash. The secret is peppered with
an HMAC under the service's secret key before hashing, so a stolen database alone cannot be used
to test guesses. Argon2 costs milliseconds by design, far too much per request, so a verified
key is remembered in process for ``cache_ttl_s`` (as a SHA-256 of the presented key, never the
key itself); a revoked key stops working within that time. Failed checks are remembered too, so
a client retrying a wrong key cannot make the service burn CPU on argon2.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from riskguard.ports import ROLES, ApiKey, DecisionStore, Role, Tenant

_KEY_SHAPE = re.compile(r"^rg_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# API key secrets are 256 random bits, so the hash need not be slow against guessing; argon2id
# with modest cost keeps the stored form standard while a cache miss stays ~10 ms.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


class AuthError(Exception):
    """Missing or wrong credentials (401) — deliberately without detail."""


class ForbiddenError(Exception):
    """A valid key without the role the operation needs (403)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key, its tenant and its role."""

    key_id: str
    tenant_id: str
    role: Role

    def require(self, *roles: Role) -> None:
        """Raise ForbiddenError unless this key has one of ``roles`` (admin may do anything)."""
        if self.role == "analyst" and "read" in roles:
            return  # analysts read everything a read key reads, and work alerts and labels
        if self.role != "admin" and self.role not in roles:
            raise ForbiddenError(f"this operation needs a key with role {' or '.join(roles)}")


def _pepper(secret: str, pepper: bytes) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def new_key(tenant_id: str, role: Role, pepper: bytes) -> tuple[ApiKey, str]:
    """A new key row and its plaintext (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    row = ApiKey(
        key_id=key_id,
        tenant_id=tenant_id,
        role=role,
        secret_hash=_HASHER.hash(_pepper(secret, pepper)),
        created_at=datetime.now(UTC),
    )
    return row, f"rg_{key_id}_{secret}"


async def create_tenant(store: DecisionStore, name: str) -> Tenant:
    """A new tenant (its first ruleset is published by the rules service)."""
    name = name.strip()
    if not 1 <= len(name) <= 100 or any(ord(c) < 32 for c in name):
        raise ValueError("tenant name must be 1-100 printable characters")
    return await store.create_tenant(name)


class KeyVerifier:
    """Checks bearer keys against the store, with a bounded in-process cache."""

    def __init__(
        self,
        store: DecisionStore,
        pepper: bytes,
        *,
        cache_ttl_s: float = 60.0,
        max_entries: int = 10_000,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._ttl = cache_ttl_s
        self._max = max_entries
        # sha256(presented key) -> (principal or None for a known-bad key, expires at)
        self._cache: OrderedDict[bytes, tuple[Principal | None, float]] = OrderedDict()
        # Checks under way: concurrent requests with one uncached key share one argon2 run.
        self._pending: dict[bytes, asyncio.Future[Principal | None]] = {}

    async def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <key>`` header, or AuthError."""
        if not authorization:
            raise AuthError
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError
        presented = presented.strip()
        match = _KEY_SHAPE.match(presented)
        if match is None:
            raise AuthError
        fingerprint = hashlib.sha256(presented.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(fingerprint)
        if cached is not None and cached[1] > now:
            if cached[0] is None:
                raise AuthError
            return cached[0]
        pending = self._pending.get(fingerprint)
        if pending is not None:
            principal = await asyncio.shield(pending)
        else:
            future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
            self._pending[fingerprint] = future
            try:
                principal = await self._check(match.group(1), match.group(2))
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it
                raise
            finally:
                del self._pending[fingerprint]
            future.set_result(principal)
            self._cache[fingerprint] = (principal, time.monotonic() + self._ttl)
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
        if principal is None:
            raise AuthError
        return principal

    async def _check(self, key_id: str, secret: str) -> Principal | None:
        row = await self._store.get_key(key_id)
        if row is None or row.revoked:
            return None
        peppered = _pepper(secret, self._pepper)
        try:
            await asyncio.to_thread(_HASHER.verify, row.secret_hash, peppered)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return Principal(key_id=row.key_id, tenant_id=row.tenant_id, role=row.role)

    def forget(self) -> None:
        """Drop every cached verification (tests, key revocation)."""
        self._cache.clear()

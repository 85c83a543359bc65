"""Managing a tenant's webhook subscriptions: create, change, rotate secrets, redeliver.

Secrets: a subscription is created with one (generated, or the caller's own ``whsec_``
value) and it is returned once, never again. A rotation adds a new secret and gives the ones in
use an expiry (24 hours by default): until then every delivery is signed with both, so the
receiver can switch at its own pace; ``remove_secrets`` retires a secret at once. At most
:data:`MAX_SECRETS` are kept. Every change re-checks the URL under the target policy.

Changes are read-modify-write with the row's revision as the guard: two concurrent changes of
one subscription never silently lose one (the second is re-applied on the fresh row).
"""

from __future__ import annotations

import secrets as random_tokens
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from riskguard.adapters.webhooks.models import (
    Delivery,
    SecretRecord,
    Subscription,
    filters_problems,
    secret_context,
)
from riskguard.adapters.webhooks.sealing import SecretBox
from riskguard.adapters.webhooks.signing import WebhookSecret
from riskguard.adapters.webhooks.store import AlreadyPendingError, StaleError, WebhookStore
from riskguard.adapters.webhooks.urls import UnsafeUrlError, UrlPolicy, resolve_target

MAX_SECRETS = 4
DEFAULT_KEEP_PREVIOUS_S = 86_400
_STALE_RETRIES = 5


class InvalidWebhookError(ValueError):
    """Input the service refuses; ``errors`` are (field, message) pairs (a 422)."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors = list(errors)


class WebhookNotFoundError(LookupError):
    """No such subscription (or delivery) for this tenant (a 404)."""


class ConflictError(Exception):
    """The change cannot apply now (a 409); the message says why."""


@dataclass(frozen=True, slots=True)
class Change:
    """A PATCH: every field optional; ``outcomes_set`` tells "clear the filter" (None) from
    "leave it"."""

    url: str | None = None
    events: Sequence[str] | None = None
    outcomes: Sequence[str] | None = None
    outcomes_set: bool = False
    description: str | None = None
    enabled: bool | None = None
    rotate_secret: bool = False
    secret: str | None = None  # the new secret on rotation (generated when None)
    keep_previous_s: int = DEFAULT_KEEP_PREVIOUS_S
    remove_secrets: Sequence[str] = ()


def _now() -> datetime:
    return datetime.now(UTC)


class WebhookService:
    """The use cases behind ``/v1/webhooks``."""

    def __init__(self, store: WebhookStore, box: SecretBox, policy: UrlPolicy) -> None:
        self.store = store
        self.box = box
        self.policy = policy

    @classmethod
    def for_settings(cls, settings: Any) -> WebhookService:
        """On the settings' database, sealing with the service key, the environment's URL
        policy (its own engine: :meth:`close` disposes of it)."""
        return cls(
            WebhookStore.from_url(settings.database_url),
            SecretBox(settings.secret),
            UrlPolicy.for_environment(settings.env),
        )

    async def close(self) -> None:
        await self.store.close()

    async def _check_url(self, url: str) -> None:
        try:
            await resolve_target(url, self.policy)
        except UnsafeUrlError as exc:
            raise InvalidWebhookError([("url", str(exc))]) from None

    def _secret(self, value: str | None, field: str) -> WebhookSecret:
        if value is None:
            return WebhookSecret.generate()
        try:
            return WebhookSecret.parse(value)
        except ValueError as exc:
            raise InvalidWebhookError([(field, str(exc))]) from None

    def _seal(self, subscription_id: str, secret: WebhookSecret, now: datetime) -> SecretRecord:
        secret_id = "whs_" + random_tokens.token_hex(6)
        sealed = self.box.seal(secret.key, secret_context(subscription_id, secret_id))
        return SecretRecord(secret_id, sealed, now)

    async def create(
        self,
        tenant_id: str,
        *,
        url: str,
        events: Sequence[str],
        outcomes: Sequence[str] | None = None,
        description: str = "",
        enabled: bool = True,
        secret: str | None = None,
    ) -> tuple[Subscription, WebhookSecret]:
        """A new subscription and its secret (to show once)."""
        problems = filters_problems(events, outcomes)
        if problems:
            raise InvalidWebhookError(problems)
        plain = self._secret(secret, "secret")
        await self._check_url(url)
        now = _now()
        subscription_id = "wh_" + random_tokens.token_hex(8)
        sub = Subscription(
            id=subscription_id,
            tenant_id=tenant_id,
            url=url,
            description=description,
            events=tuple(dict.fromkeys(events)),
            outcomes=None if outcomes is None else tuple(dict.fromkeys(outcomes)),
            secrets=(self._seal(subscription_id, plain, now),),
            enabled=enabled,
            created_at=now,
            updated_at=now,
        )
        try:
            await self.store.create_subscription(sub)
        except ValueError as exc:  # the key's tenant was deleted meanwhile
            raise ConflictError(str(exc)) from None
        return sub, plain

    async def get(self, tenant_id: str, subscription_id: str) -> Subscription:
        sub = await self.store.get_subscription(tenant_id, subscription_id)
        if sub is None:
            raise WebhookNotFoundError(f"webhook {subscription_id} not found")
        return sub

    async def subscriptions(self, tenant_id: str) -> list[Subscription]:
        return await self.store.list_subscriptions(tenant_id)

    async def update(
        self, tenant_id: str, subscription_id: str, change: Change
    ) -> tuple[Subscription, WebhookSecret | None]:
        """Apply ``change``; the new secret when it rotated one (to show once)."""
        if change.events is not None or change.outcomes_set:
            problems = filters_problems(
                change.events if change.events is not None else ["*"],
                change.outcomes if change.outcomes_set else None,
            )
            if problems:
                raise InvalidWebhookError(problems)
        new_secret = (
            self._secret(change.secret, "secret")
            if change.rotate_secret or change.secret is not None
            else None
        )
        if change.url is not None:
            await self._check_url(change.url)
        for _ in range(_STALE_RETRIES):
            current = await self.get(tenant_id, subscription_id)
            updated = self._apply(current, change, new_secret, _now())
            try:
                await self.store.save_subscription(updated, expected_revision=current.revision)
            except StaleError:
                continue
            return updated, new_secret
        raise ConflictError("the webhook is being changed concurrently; retry")

    def _apply(
        self,
        sub: Subscription,
        change: Change,
        new_secret: WebhookSecret | None,
        now: datetime,
    ) -> Subscription:
        kept = [s for s in sub.secrets if s.active(now)]  # expired ones are dropped
        unknown = [i for i in change.remove_secrets if i not in {s.id for s in kept}]
        if unknown:
            raise InvalidWebhookError(
                [("remove_secrets", f"no active secret {i!r} on this webhook") for i in unknown]
            )
        kept = [s for s in kept if s.id not in set(change.remove_secrets)]
        if new_secret is not None:
            # the secrets in use keep signing until the overlap ends (or stop now, with 0)
            until = now + timedelta(seconds=change.keep_previous_s)
            kept = [
                replace(s, expires_at=min(s.expires_at or until, until))
                for s in kept
                if change.keep_previous_s > 0
            ]
            kept.append(self._seal(sub.id, new_secret, now))
        if not kept:
            raise InvalidWebhookError(
                [("remove_secrets", "a webhook keeps at least one secret (rotate instead)")]
            )
        if len(kept) > MAX_SECRETS:
            raise InvalidWebhookError(
                [("rotate_secret", f"at most {MAX_SECRETS} secrets; remove an older one first")]
            )
        enabled = sub.enabled if change.enabled is None else change.enabled
        return replace(
            sub,
            url=sub.url if change.url is None else change.url,
            events=sub.events if change.events is None else tuple(dict.fromkeys(change.events)),
            outcomes=(
                sub.outcomes
                if not change.outcomes_set
                else None
                if change.outcomes is None
                else tuple(dict.fromkeys(change.outcomes))
            ),
            description=sub.description if change.description is None else change.description,
            enabled=enabled,
            disabled_reason=None if enabled else sub.disabled_reason,
            secrets=tuple(kept),
            updated_at=now,
            revision=sub.revision + 1,
        )

    async def delete(self, tenant_id: str, subscription_id: str) -> None:
        if not await self.store.delete_subscription(tenant_id, subscription_id):
            raise WebhookNotFoundError(f"webhook {subscription_id} not found")

    async def deliveries(
        self,
        tenant_id: str,
        subscription_id: str,
        *,
        state: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Delivery], str | None]:
        await self.get(tenant_id, subscription_id)
        try:
            return await self.store.list_deliveries(
                tenant_id, subscription_id, state=state, limit=limit, cursor=cursor
            )
        except ValueError as exc:
            raise InvalidWebhookError([("cursor", str(exc))]) from None

    async def delivery(self, tenant_id: str, subscription_id: str, delivery_id: str) -> Delivery:
        found = await self.store.get_delivery(tenant_id, subscription_id, delivery_id)
        if found is None:
            raise WebhookNotFoundError(f"delivery {delivery_id} not found")
        return found

    async def redeliver(self, tenant_id: str, subscription_id: str, delivery_id: str) -> Delivery:
        """Send a delivered or dead delivery again (same id, fresh attempts)."""
        try:
            found = await self.store.redeliver(tenant_id, subscription_id, delivery_id, _now())
        except AlreadyPendingError:
            raise ConflictError(
                f"delivery {delivery_id} is pending already; it will be attempted"
            ) from None
        if found is None:
            raise WebhookNotFoundError(f"delivery {delivery_id} not found")
        return found

"""Webhooks: Standard Webhooks signatures, target URL policy, subscriptions and the dispatcher.

Modules, in the order they build on each other:

- ``signing`` — ``whsec_`` secrets, the ``webhook-*`` headers, :func:`verify` for receivers;
- ``sealing`` — secrets encrypted at rest under the service key;
- ``urls`` and ``transport`` — which targets may be called, and calling only the addresses
  just checked;
- ``models`` and ``store`` — subscriptions, deliveries and the dispatcher's leases in SQL;
- ``service`` — the use cases behind ``/v1/webhooks``;
- ``dispatcher`` — the outbox fan-out (webhooks and streams) and webhook delivery with retries.

See ``docs/webhooks.md`` for the design and the guarantees.
"""

from riskguard.adapters.webhooks.dispatcher import (
    Dispatcher,
    DispatcherConfig,
    RetryPolicy,
    run_dispatcher,
)
from riskguard.adapters.webhooks.sealing import SecretBox
from riskguard.adapters.webhooks.service import WebhookService
from riskguard.adapters.webhooks.signing import (
    WebhookSecret,
    WebhookVerificationError,
    sign,
    verify,
    webhook_headers,
)
from riskguard.adapters.webhooks.store import WebhookStore
from riskguard.adapters.webhooks.urls import UnsafeUrlError, UrlPolicy, resolve_target

__all__ = [
    "Dispatcher",
    "DispatcherConfig",
    "RetryPolicy",
    "SecretBox",
    "UnsafeUrlError",
    "UrlPolicy",
    "WebhookSecret",
    "WebhookService",
    "WebhookStore",
    "WebhookVerificationError",
    "resolve_target",
    "run_dispatcher",
    "sign",
    "verify",
    "webhook_headers",
]

"""Standard Webhooks signatures (https://www.standardwebhooks.com/, spec version 1.0.0).

A delivery carries three headers:

- ``webhook-id`` — the delivery id; the same on every retry, so it is the receiver's
  idempotency key,
- ``webhook-timestamp`` — integer Unix seconds of this attempt (receivers refuse stale ones),
- ``webhook-signature`` — ``v1,<base64 HMAC-SHA256>`` of ``"{id}.{timestamp}.{body}"`` under
  each active secret, space-separated (two during a secret rotation).

Secrets are shown to users as ``whsec_`` + base64 of 24 to 64 random bytes, the format the
spec's reference libraries read, so receivers can verify with any of them. :func:`verify` is
the receiving side, for tests and for receivers written in Python.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from secrets import token_bytes

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_TOLERANCE_S = 300  # the reference libraries' window: five minutes either way

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class WebhookVerificationError(ValueError):
    """A delivery whose headers are missing, stale or carry no valid signature."""


@dataclass(frozen=True, slots=True, repr=False)
class WebhookSecret:
    """An HMAC key; ``str()`` is its ``whsec_`` form, ``repr()`` never shows it."""

    key: bytes

    def __post_init__(self) -> None:
        if not MIN_SECRET_BYTES <= len(self.key) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"a webhook secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes"
            )

    @classmethod
    def generate(cls, nbytes: int = 32) -> WebhookSecret:
        return cls(token_bytes(nbytes))

    @classmethod
    def parse(cls, value: str) -> WebhookSecret:
        """Read ``whsec_<base64>`` (the padding may be left out). ValueError when malformed."""
        if not value.startswith(SECRET_PREFIX):
            raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
        body = value[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a webhook secret is {SECRET_PREFIX} followed by base64") from None
        return cls(key)

    def __str__(self) -> str:
        return SECRET_PREFIX + base64.b64encode(self.key).decode("ascii")

    def __repr__(self) -> str:
        return "WebhookSecret(whsec_***)"


def _check_id(msg_id: str) -> None:
    # the signed content is split on "." by nobody, but an id holding one could make two
    # different (id, timestamp) pairs sign the same bytes
    if not msg_id or "." in msg_id or not msg_id.isascii():
        raise ValueError("a webhook id is non-empty ASCII without '.'")


def signed_content(msg_id: str, timestamp: int, payload: bytes) -> bytes:
    """The bytes a signature covers: ``{id}.{timestamp}.{payload}``."""
    _check_id(msg_id)
    return f"{msg_id}.{int(timestamp)}.".encode("ascii") + payload


def signature(secret: WebhookSecret, msg_id: str, timestamp: int, payload: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    digest = hmac.new(secret.key, signed_content(msg_id, timestamp, payload), hashlib.sha256)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest.digest()).decode('ascii')}"


def sign(msg_id: str, timestamp: int, payload: bytes, secrets: Sequence[WebhookSecret]) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    return " ".join(signature(s, msg_id, timestamp, payload) for s in secrets)


def webhook_headers(
    msg_id: str, timestamp: int, payload: bytes, secrets: Sequence[WebhookSecret]
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(int(timestamp)),
        HEADER_SIGNATURE: sign(msg_id, timestamp, payload, secrets),
    }


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secrets: WebhookSecret | Sequence[WebhookSecret],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check a received delivery; returns its ``webhook-id``.

    ``payload`` must be the body exactly as received (re-serialised JSON will not verify).
    Header names are matched case-insensitively. The timestamp must be within
    ``tolerance_s`` of ``now``; one ``v1`` signature under any of ``secrets`` must match
    (compared in constant time); signatures of other versions are ignored.
    Raises :class:`WebhookVerificationError`.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get(HEADER_ID, "")
    stamp = lowered.get(HEADER_TIMESTAMP, "")
    offered = lowered.get(HEADER_SIGNATURE, "")
    if not (msg_id and stamp and offered):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or signature")
    if not (stamp.isascii() and stamp.isdigit()):
        raise WebhookVerificationError("webhook-timestamp is not an integer")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    body = payload.encode() if isinstance(payload, str) else payload
    keys = [secrets] if isinstance(secrets, WebhookSecret) else list(secrets)
    try:
        content = signed_content(msg_id, timestamp, body)
    except ValueError:
        raise WebhookVerificationError("webhook-id is malformed") from None
    expected = [hmac.new(k.key, content, hashlib.sha256).digest() for k in keys]
    for item in offered.split(" "):
        version, _, encoded = item.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if any(hmac.compare_digest(candidate, digest) for digest in expected):
            return msg_id
    raise WebhookVerificationError("no matching signature")

"""Standard Webhooks signatures: the specification's published vector, verification rules,
rotation with several secrets, and secrets sealed at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riskguard.adapters.webhooks.sealing import SealedSecretError, SecretBox
from riskguard.adapters.webhooks.signing import (
    WebhookSecret,
    WebhookVerificationError,
    sign,
    signature,
    verify,
    webhook_headers,
)

# The vector every reference library of the specification tests its signer with
# (standard-webhooks/standard-webhooks, libraries/*: "sign function works").
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# signatures the reference tests use as "some other, wrong" signatures
OTHER_V1 = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
OTHER_V2 = "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="


def spec_headers(signature_header: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": signature_header,
    }


def independent_signature(secret_b64: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The scheme as the specification states it, with the standard library only."""
    key = base64.b64decode(secret_b64)
    content = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


# -- the published vector ------------------------------------------------------------------


def test_the_specification_vector_signs_as_published() -> None:
    secret = WebhookSecret.parse(SPEC_SECRET)
    assert signature(secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE
    assert sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD, [secret]) == SPEC_SIGNATURE
    assert (
        independent_signature(
            SPEC_SECRET.removeprefix("whsec_"), SPEC_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD
        )
        == SPEC_SIGNATURE
    )


def test_the_specification_vector_verifies() -> None:
    secret = WebhookSecret.parse(SPEC_SECRET)
    assert verify(SPEC_PAYLOAD, spec_headers(), secret, now=SPEC_TIMESTAMP) == SPEC_ID
    assert verify(SPEC_PAYLOAD.decode(), spec_headers(), [secret], now=SPEC_TIMESTAMP) == SPEC_ID


def test_header_names_are_case_insensitive() -> None:
    headers = {k.upper(): v for k, v in spec_headers().items()}
    assert verify(SPEC_PAYLOAD, headers, WebhookSecret.parse(SPEC_SECRET), now=SPEC_TIMESTAMP)


def test_several_signatures_one_valid_verifies() -> None:
    header = " ".join((OTHER_V1, OTHER_V2, SPEC_SIGNATURE, OTHER_V1))
    secret = WebhookSecret.parse(SPEC_SECRET)
    assert verify(SPEC_PAYLOAD, spec_headers(header), secret, now=SPEC_TIMESTAMP) == SPEC_ID


@pytest.mark.parametrize(
    "bad",
    [
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",  # last byte changed
        OTHER_V1,
        "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",  # right bytes, unknown version
        "v1,dawfeoifkpqwoekfpqoekf",
        "v1,",
        SPEC_SIGNATURE[:8],
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ],
)
def test_wrong_signatures_are_refused(bad: str) -> None:
    with pytest.raises(WebhookVerificationError):
        verify(
            SPEC_PAYLOAD, spec_headers(bad), WebhookSecret.parse(SPEC_SECRET), now=SPEC_TIMESTAMP
        )


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    headers = spec_headers()
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(SPEC_PAYLOAD, headers, WebhookSecret.parse(SPEC_SECRET), now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("stamp", ["hello", "1614265330.5", "-1614265330", " 1614265330", "١٢"])
def test_a_timestamp_that_is_not_an_integer_is_refused(stamp: str) -> None:
    headers = spec_headers()
    headers["webhook-timestamp"] = stamp
    with pytest.raises(WebhookVerificationError, match="integer"):
        verify(SPEC_PAYLOAD, headers, WebhookSecret.parse(SPEC_SECRET), now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_stale_or_future_timestamps_are_refused(offset: int) -> None:
    secret = WebhookSecret.parse(SPEC_SECRET)
    stamp = SPEC_TIMESTAMP + offset
    headers = webhook_headers(SPEC_ID, stamp, SPEC_PAYLOAD, [secret])
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(SPEC_PAYLOAD, headers, secret, now=SPEC_TIMESTAMP)
    assert verify(SPEC_PAYLOAD, headers, secret, now=stamp) == SPEC_ID


def test_the_body_must_be_the_bytes_received() -> None:
    secret = WebhookSecret.parse(SPEC_SECRET)
    reserialised = b'{"test":2432232314}'  # same JSON, other bytes
    with pytest.raises(WebhookVerificationError):
        verify(reserialised, spec_headers(), secret, now=SPEC_TIMESTAMP)


def test_an_id_with_a_dot_is_neither_signed_nor_accepted() -> None:
    secret = WebhookSecret.parse(SPEC_SECRET)
    with pytest.raises(ValueError, match=r"without '\.'"):
        sign("msg.1", SPEC_TIMESTAMP, SPEC_PAYLOAD, [secret])
    headers = spec_headers()
    headers["webhook-id"] = "msg.1"
    with pytest.raises(WebhookVerificationError, match="malformed"):
        verify(SPEC_PAYLOAD, headers, secret, now=SPEC_TIMESTAMP)


# -- rotation: several secrets -------------------------------------------------------------


def test_rotation_signs_with_every_secret_and_each_one_verifies() -> None:
    old, new, stranger = (WebhookSecret.generate() for _ in range(3))
    headers = webhook_headers("msg_rotation", 1_700_000_000, b"{}", [old, new])
    parts = headers["webhook-signature"].split(" ")
    assert len(parts) == 2
    assert all(p.startswith("v1,") for p in parts)
    for secret in (old, new):
        assert verify(b"{}", headers, secret, now=1_700_000_000) == "msg_rotation"
    assert verify(b"{}", headers, [stranger, new], now=1_700_000_000) == "msg_rotation"
    with pytest.raises(WebhookVerificationError):
        verify(b"{}", headers, stranger, now=1_700_000_000)


def test_signing_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        sign("msg_x", 1, b"", [])


# -- secrets -------------------------------------------------------------------------------


def test_secrets_print_as_whsec_and_parse_back_with_or_without_padding() -> None:
    secret = WebhookSecret.generate()
    text = str(secret)
    assert text.startswith("whsec_")
    assert WebhookSecret.parse(text) == secret
    assert WebhookSecret.parse(text.rstrip("=")) == secret
    assert len(secret.key) == 32


def test_repr_never_shows_the_key() -> None:
    secret = WebhookSecret.generate()
    assert str(secret).removeprefix("whsec_") not in repr(secret)
    assert "***" in repr(secret)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with"),
        ("whsec_not base64!", "base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "24 to 64 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes"),
        ("whsec_", "24 to 64 bytes"),
    ],
)
def test_malformed_secrets_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WebhookSecret.parse(value)


@given(
    key=st.binary(min_size=24, max_size=64),
    msg_id=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="."),
        min_size=1,
        max_size=40,
    ),
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=st.binary(max_size=300),
    flip=st.integers(min_value=0),
)
def test_signatures_match_the_stated_scheme_and_any_change_breaks_them(
    key: bytes, msg_id: str, timestamp: int, body: bytes, flip: int
) -> None:
    secret = WebhookSecret(key)
    headers = webhook_headers(msg_id, timestamp, body, [secret])
    expected = independent_signature(base64.b64encode(key).decode(), msg_id, timestamp, body)
    assert headers["webhook-signature"] == expected
    assert verify(body, headers, secret, now=timestamp) == msg_id
    if body:
        changed = bytearray(body)
        changed[flip % len(body)] ^= 0x01
        with pytest.raises(WebhookVerificationError):
            verify(bytes(changed), headers, secret, now=timestamp)


# -- sealed at rest ------------------------------------------------------------------------


def test_sealed_secrets_open_only_with_the_same_key_and_context() -> None:
    box = SecretBox(b"service-key-0123456789abcdef0123456789")
    sealed = box.seal(b"k" * 32, "webhook-secret/wh_1/whs_1")
    assert sealed.startswith("v1.")
    assert b"k" * 32 not in base64.urlsafe_b64decode(sealed[3:])
    assert box.open(sealed, "webhook-secret/wh_1/whs_1") == b"k" * 32
    assert box.seal(b"k" * 32, "webhook-secret/wh_1/whs_1") != sealed  # fresh nonce each time
    with pytest.raises(SealedSecretError):
        box.open(sealed, "webhook-secret/wh_2/whs_1")  # copied into another subscription
    with pytest.raises(SealedSecretError):
        SecretBox(b"another-service-key-0123456789abcdef").open(sealed, "webhook-secret/wh_1/whs_1")
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SealedSecretError):
        box.open(tampered, "webhook-secret/wh_1/whs_1")
    with pytest.raises(SealedSecretError):
        box.open("plain text", "webhook-secret/wh_1/whs_1")

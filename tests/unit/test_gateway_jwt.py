"""JWT verification: the Wycheproof JOSE vectors, the classic attacks, claims and transport.

Tokens in the own tests are signed here with ``cryptography`` directly (not with joserfc, which
the verifier uses), so the two sides do not share an implementation. Time is a fixed clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.adapters.gateway import jwt as gw
from riskguard.adapters.gateway.jwt import (
    KNOWN_ALGORITHMS,
    AlgorithmNotAllowed,
    BadSignature,
    Identity,
    InvalidClaim,
    JwtError,
    JwtVerifier,
    KeySet,
    KeySetError,
    KeysUnavailable,
    MalformedAuthorization,
    MalformedToken,
    MissingClaim,
    MissingToken,
    StaticKeys,
    TokenExpired,
    TokenInUrl,
    TokenIssuedInFuture,
    TokenNotYetValid,
    UnknownKid,
    UnsupportedHeader,
    WrongAudience,
    WrongIssuer,
    bearer_token,
    check_algorithms,
    refuse_token_in_url,
    verify_jws,
)
from riskguard.adapters.gateway.settings import (
    GatewaySettings,
    build_verifier,
    load_gateway_settings,
)
from riskguard.settings import SettingsError

DATA = Path(__file__).resolve().parents[1] / "data" / "wycheproof"
ALL = tuple(sorted(KNOWN_ALGORITHMS))
NOW = 1_790_000_000.0
ISS = "https://idp.internal.example"
ENV_PREFIXES = ("RISKGUARD_JWT_", "RISKGUARD_RATELIMIT_", "RISKGUARD_REDIS_", "RISKGUARD_ENV")
AUD = "riskguard-gateway"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the developer's shell."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)


# --------------------------------------------------------------------------------------------
# Wycheproof


def _vectors(name: str) -> tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]:
    doc = json.loads((DATA / name).read_text())
    cases = [(group, test) for group in doc["testGroups"] for test in group["tests"]]
    return doc, cases


JWS_DOC, JWS_CASES = _vectors("json_web_signature_test.json")
JWK_DOC, JWK_CASES = _vectors("json_web_key_test.json")
JWS_BY_ID = {t["tcId"]: t for _, t in JWS_CASES}

# Defects of the upstream file (see tests/data/wycheproof/README.md): what we answer instead.
DEFECTS: dict[int, str] = {
    367: "accepted",  # the token is tcId 357's, which is valid
    370: "accepted",
    372: "malformed_token",  # '?' is not base64url
    373: "malformed_token",
    346: "alg_not_allowed",  # PS384 token, key bound to PS256 by its alg
    350: "alg_not_allowed",
    347: "unknown_kid",  # key alg "ES521" is not a JWS algorithm: the key is skipped
    351: "unknown_kid",
}


def _group_keys(group: dict[str, Any]) -> dict[str, Any]:
    """The group's verification key as a JWKS (public when given; HMAC groups have only
    ``private``, which for ``oct`` is the key itself)."""
    key = group.get("public") or group["private"]
    return key if "keys" in key else {"keys": [key]}


def _outcome(token: Any, jwks: dict[str, Any]) -> str:
    """ "accepted" or the stable code of the refusal (``key_set`` when the set is refused)."""
    try:
        keys = KeySet.from_jwks(jwks, algorithms=ALL, allow_symmetric=True)
    except KeySetError:
        return "key_set"
    try:
        verify_jws(token, keys, algorithms=ALL)
    except JwtError as exc:
        return exc.code
    return "accepted"


def test_the_copied_vectors_are_complete() -> None:
    assert JWS_DOC["numberOfTests"] == len(JWS_CASES) == 401
    assert sum(t["result"] == "valid" for _, t in JWS_CASES) == 46
    assert JWK_DOC["numberOfTests"] == len(JWK_CASES) == 26


@pytest.mark.parametrize(
    ("group", "case"), JWS_CASES, ids=[f"{t['tcId']}-{t['comment']}" for _, t in JWS_CASES]
)
def test_wycheproof_jws(group: dict[str, Any], case: dict[str, Any]) -> None:
    outcome = _outcome(case["jws"], _group_keys(group))
    if case["tcId"] in DEFECTS:
        assert outcome == DEFECTS[case["tcId"]]
    elif case["result"] == "valid":
        assert outcome == "accepted"
    else:
        assert outcome != "accepted"


@pytest.mark.parametrize(
    ("group", "case"), JWK_CASES, ids=[f"{t['tcId']}-{t['comment']}" for _, t in JWK_CASES]
)
def test_wycheproof_jwk(group: dict[str, Any], case: dict[str, Any]) -> None:
    outcome = _outcome(case["jws"], _group_keys(group))
    assert (outcome == "accepted") == (case["result"] == "valid"), outcome


def test_the_defects_are_defects_of_the_file() -> None:
    valid = JWS_BY_ID[357]
    assert valid["result"] == "valid"
    for tc in (367, 370):  # "invalid padding" vectors that carry the valid token unchanged
        assert JWS_BY_ID[tc]["jws"] == valid["jws"]
    for tc in (372, 373):  # "valid" vectors with a character base64url does not have
        assert "?" in JWS_BY_ID[tc]["jws"]
        assert JWS_BY_ID[tc]["jws"].replace("?", "") == valid["jws"]
    groups = {t["tcId"]: g for g, t in JWS_CASES}
    for tc, alg in ((346, "PS256"), (350, "PS256"), (347, "ES521"), (351, "ES521")):
        key = dict(groups[tc]["public"])
        assert key.pop("alg") == alg
        # RFC 7520 publishes the key without "alg": so given, the token verifies
        assert _outcome(JWS_BY_ID[tc]["jws"], {"keys": [key]}) == "accepted"


def test_claims_are_always_checked_on_the_production_path() -> None:
    """A Wycheproof-valid signature over a payload that is not a claims set is refused by the
    verifier the gateway uses (verify_jws alone accepts it)."""
    group, case = JWS_CASES[0]
    assert case["result"] == "valid"
    keys = KeySet.from_jwks(_group_keys(group), algorithms=ALL, allow_symmetric=True)
    verify_jws(case["jws"], keys, algorithms=ALL)
    verifier = JwtVerifier(StaticKeys(keys), issuer=ISS, audience=AUD, algorithms=ALL)
    with pytest.raises(MalformedToken):
        run(verifier.verify(case["jws"]))


# --------------------------------------------------------------------------------------------
# Keys, signing and tokens of our own


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Drive a verification that never waits (static keys) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the verification waited for I/O")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64int(n: int, size: int | None = None) -> str:
    return b64(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
HMAC_HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}

Signer = Callable[[bytes], bytes]


def signer(alg: str, private: Any) -> Signer:
    bits = alg[-3:]
    if alg.startswith("HS"):
        return lambda m: hmac.new(private, m, HMAC_HASHES[bits]).digest()
    if alg.startswith("RS"):
        return lambda m: private.sign(m, padding.PKCS1v15(), HASHES[bits]())
    if alg.startswith("PS"):
        h = HASHES[bits]()
        pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
        return lambda m: private.sign(m, pss, h)
    if alg.startswith("ES"):
        size = (private.curve.key_size + 7) // 8

        def sign_ec(m: bytes) -> bytes:
            r, s = decode_dss_signature(private.sign(m, ec.ECDSA(HASHES[bits]())))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")

        return sign_ec
    return lambda m: private.sign(m)  # EdDSA / Ed25519


def compact(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, sign: Signer) -> str:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(h)}.{b64(p)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def public_jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        nums = public.public_numbers()
        jwk = {"kty": "RSA", "n": b64int(nums.n), "e": b64int(nums.e)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        size = (public.curve.key_size + 7) // 8
        crv = {v.name: k for k, v in CURVES.items()}[public.curve.name]
        nums = public.public_numbers()
        jwk = {"kty": "EC", "crv": crv, "x": b64int(nums.x, size), "y": b64int(nums.y, size)}
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    return {**jwk, "kid": kid, "use": "sig", **extra}


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEYS = {crv: ec.generate_private_key(curve()) for crv, curve in CURVES.items()}
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_FOR = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), ("rsa-1", RSA_KEY)),
    "ES256": ("ec-256", EC_KEYS["P-256"]),
    "ES384": ("ec-384", EC_KEYS["P-384"]),
    "ES512": ("ec-521", EC_KEYS["P-521"]),
    "EdDSA": ("ed-1", ED_KEY),
    "Ed25519": ("ed-1", ED_KEY),
}
JWKS = {
    "keys": [
        public_jwk(RSA_KEY, "rsa-1"),
        public_jwk(EC_KEYS["P-256"], "ec-256"),
        public_jwk(EC_KEYS["P-384"], "ec-384"),
        public_jwk(EC_KEYS["P-521"], "ec-521"),
        public_jwk(ED_KEY, "ed-1"),
    ]
}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_DROP = object()


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "svc-payments",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "t-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _DROP}


def live_claims() -> dict[str, Any]:
    """Claims valid under the real clock (for verifiers built from settings)."""
    return claims(exp=4e9, nbf=_DROP, iat=_DROP)


def token(alg: str = "RS256", payload: dict[str, Any] | bytes | None = None, **header: Any) -> str:
    kid, private = KEY_FOR[alg]
    head = {"alg": alg, "kid": kid, "typ": "JWT", **header}
    return compact(head, claims() if payload is None else payload, signer(alg, private))


def verifier(
    *, clock: Clock | None = None, algorithms: tuple[str, ...] = gw.DEFAULT_ALGORITHMS, **kw: Any
) -> JwtVerifier:
    keys = KeySet.from_jwks(JWKS, algorithms=algorithms)
    return JwtVerifier(
        StaticKeys(keys),
        issuer=ISS,
        audience=kw.pop("audience", AUD),
        algorithms=algorithms,
        clock=clock or Clock(),
        **kw,
    )


def refusal(v: JwtVerifier, tok: str) -> JwtError:
    with pytest.raises(JwtError) as info:
        run(v.verify(tok))
    return info.value


@pytest.mark.parametrize("alg", sorted(KEY_FOR))
def test_every_key_type_verifies_its_own_algorithms(alg: str) -> None:
    identity = run(verifier().verify(token(alg)))
    assert isinstance(identity, Identity)
    assert identity.service_id == "svc-payments"
    assert (identity.alg, identity.kid, identity.issuer) == (alg, KEY_FOR[alg][0], ISS)
    assert identity.audience == (AUD,)
    assert identity.expires_at == NOW + 300
    assert identity.token_id == "t-1"


def test_each_key_admits_only_the_algorithms_of_its_type() -> None:
    keys = KeySet.from_jwks(JWKS, algorithms=ALL)
    bound = {k.kid: k.algorithms for k in keys.keys}
    assert bound == {
        "rsa-1": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        "ec-256": frozenset({"ES256"}),
        "ec-384": frozenset({"ES384"}),
        "ec-521": frozenset({"ES512"}),
        "ed-1": frozenset({"EdDSA", "Ed25519"}),
    }
    # a key's own "alg" narrows it to that one algorithm
    pinned = KeySet.from_jwks({"keys": [public_jwk(RSA_KEY, "r", alg="PS256")]}, algorithms=ALL)
    assert pinned.keys[0].algorithms == frozenset({"PS256"})


@pytest.mark.parametrize(
    ("alg", "kid"),
    [
        ("ES256", "rsa-1"),
        ("RS256", "ec-256"),
        ("ES384", "ec-256"),
        ("ES256", "ec-384"),
        ("EdDSA", "rsa-1"),
        ("PS256", "ed-1"),
    ],
)
def test_an_algorithm_not_bound_to_the_key_is_refused(alg: str, kid: str) -> None:
    tok = compact({"alg": alg, "kid": kid}, claims(), signer(alg, KEY_FOR[alg][1]))
    assert refusal(verifier(), tok).code == "alg_not_allowed"


# -- alg none ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2ln"])
def test_alg_none_is_refused_in_any_letter_case(alg: str, signature: str) -> None:
    head = b64(json.dumps({"alg": alg, "kid": "rsa-1"}).encode())
    tok = f"{head}.{b64(json.dumps(claims()).encode())}.{signature}"
    for v in (verifier(), verifier(algorithms=ALL)):
        assert refusal(v, tok).code == "alg_not_allowed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_cannot_be_configured(alg: str) -> None:
    with pytest.raises(ValueError, match="none"):
        check_algorithms(["RS256", alg])
    with pytest.raises(SettingsError, match="none"):
        load_gateway_settings(jwt_algorithms=f"RS256,{alg}")


# -- HS/RS confusion --------------------------------------------------------------------------

RSA_PUBLIC = RSA_KEY.public_key()
CONFUSION_SECRETS = {
    "pem": RSA_PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "pkcs1-pem": RSA_PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    ),
    "der": RSA_PUBLIC.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ),
    "jwk-json": json.dumps(public_jwk(RSA_KEY, "rsa-1")).encode(),
    "modulus": RSA_PUBLIC.public_numbers().n.to_bytes(256, "big"),
}


@pytest.mark.parametrize("secret", sorted(CONFUSION_SECRETS))
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_signed_with_the_rsa_public_key_is_refused(secret: str, alg: str) -> None:
    sign = signer(alg, CONFUSION_SECRETS[secret])
    with_kid = compact({"alg": alg, "kid": "rsa-1"}, claims(), sign)
    without_kid = compact({"alg": alg}, claims(), sign)
    # HS* not allowed at all (the default): refused before any key is looked at
    assert refusal(verifier(), with_kid).code == "alg_not_allowed"
    # even with HS* allowed, the RSA key is bound to RSA algorithms only
    permissive = verifier(algorithms=ALL)
    assert refusal(permissive, with_kid).code == "alg_not_allowed"
    assert refusal(permissive, without_kid).code == "unknown_kid"


def test_hs256_with_an_explicitly_configured_secret(tmp_path: Path) -> None:
    secret = bytes(range(32))
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "s1", "k": b64(secret)}]}))
    settings = GatewaySettings(
        jwt_keys_file=path, jwt_issuer=ISS, jwt_audience=AUD, jwt_algorithms="HS256"
    )
    v = build_verifier(settings)
    tok = compact({"alg": "HS256", "kid": "s1"}, live_claims(), signer("HS256", secret))
    assert run(v.verify(tok)).service_id == "svc-payments"
    # the same file without HS256 allowed: the secret key is not usable at all
    with pytest.raises(SettingsError, match="no usable key"):
        build_verifier(GatewaySettings(jwt_keys_file=path, jwt_issuer=ISS, jwt_audience=AUD))


def test_secret_keys_are_never_mixed_with_public_keys_nor_taken_from_a_url() -> None:
    mixed = {"keys": [*JWKS["keys"], {"kty": "oct", "kid": "s1", "k": b64(bytes(32))}]}
    with pytest.raises(KeySetError, match="mixes"):
        KeySet.from_jwks(mixed, algorithms=ALL, allow_symmetric=True)
    only_secret = {"keys": [{"kty": "oct", "kid": "s1", "k": b64(bytes(32))}]}
    keys = KeySet.from_jwks(only_secret, algorithms=ALL, allow_symmetric=False)
    assert not keys
    assert keys.skipped[0].reason.startswith("symmetric keys are not allowed")
    with pytest.raises(SettingsError, match="never fetched"):
        load_gateway_settings(
            jwt_jwks_url="https://idp.example/jwks", jwt_issuer=ISS, jwt_audience=AUD,
            jwt_algorithms="RS256,HS256",
        )  # fmt: skip


# -- kid --------------------------------------------------------------------------------------

INJECTIONS = [
    "../../etc/passwd",
    "/etc/passwd",
    "file:///etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "' OR 1=1 --",
    "x'; DROP TABLE keys; --",
    "rsa-1\x00.pem",
    "|cat /etc/passwd",
    "http://127.0.0.1:9/jwks.json",
]

_touched: list[str] | None = None
_WATCHED = (
    "open", "os.listdir", "os.scandir", "os.system", "os.exec", "os.posix_spawn", "os.remove",
    "os.rename", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "sqlite3",
    "subprocess", "shutil", "glob", "urllib", "http.client", "ftplib",
)  # fmt: skip


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _touched is not None and event.startswith(_WATCHED):
        _touched.append(event)


sys.addaudithook(_audit)


@pytest.fixture
def no_io() -> Iterator[list[str]]:
    """Records every file, OS, database, socket or process event raised while the test runs."""
    global _touched
    _touched = []
    try:
        yield _touched
    finally:
        _touched = None


@pytest.mark.parametrize("kid", INJECTIONS)
def test_kid_injection_is_just_an_unknown_kid(kid: str, no_io: list[str]) -> None:
    v = verifier()
    tok = compact({"alg": "RS256", "kid": kid}, claims(), signer("RS256", RSA_KEY))
    assert refusal(v, tok).code == "unknown_kid"
    assert no_io == []


@pytest.mark.parametrize("kid", [7, ["rsa-1"], {"k": "rsa-1"}, True, "k" * 257])
def test_a_kid_that_is_not_a_short_string_is_malformed(kid: Any) -> None:
    tok = compact({"alg": "RS256", "kid": kid}, claims(), signer("RS256", RSA_KEY))
    assert refusal(verifier(), tok).code == "malformed_token"


def test_without_kid_only_a_single_fitting_key_is_used() -> None:
    tok = compact({"alg": "ES384"}, claims(), signer("ES384", EC_KEYS["P-384"]))
    assert run(verifier().verify(tok)).kid is None  # one key verifies ES384
    tok = compact({"alg": "RS256"}, claims(), signer("RS256", RSA_KEY))
    two_rsa = {"keys": [public_jwk(RSA_KEY, "a"), public_jwk(ATTACKER_RSA, "b")]}
    v = JwtVerifier(StaticKeys(KeySet.from_jwks(two_rsa)), issuer=ISS, audience=AUD, clock=Clock())
    assert refusal(v, tok).code == "unknown_kid"  # ambiguous: never guess


# -- keys in the token's own header -----------------------------------------------------------


def _self_signed_cert(private: Any) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=36500))
        .sign(private, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@pytest.mark.parametrize("kid", ["ec-256", "attacker"])
@pytest.mark.parametrize("carrier", ["jwk", "jku", "x5u", "x5c"])
def test_keys_offered_by_the_token_are_ignored(kid: str, carrier: str, no_io: list[str]) -> None:
    offered: Any = {
        "jwk": public_jwk(ATTACKER_EC, kid),
        "jku": "http://127.0.0.1:9/attacker-jwks.json",
        "x5u": "http://127.0.0.1:9/attacker.pem",
        "x5c": [_self_signed_cert(ATTACKER_EC)],
    }[carrier]
    tok = compact(
        {"alg": "ES256", "kid": kid, carrier: offered}, claims(), signer("ES256", ATTACKER_EC)
    )
    code = refusal(verifier(), tok).code
    assert code == ("bad_signature" if kid == "ec-256" else "unknown_kid")
    assert no_io == []  # nothing was fetched or read


# -- header extensions and shape --------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"], "exp": NOW + 300},
        {"crit": ["b64"], "b64": True},
        {"crit": []},
        {"crit": "exp"},
        {"b64": False},
        {"crit": ["x-unknown"], "x-unknown": 1},
    ],
)
def test_unsupported_header_extensions_are_refused(extra: dict[str, Any]) -> None:
    assert refusal(verifier(), token(**extra)).code == "unsupported_header"


def _segments(tok: str) -> list[str]:
    return tok.split(".")


def _malformed() -> dict[str, str]:
    good = token()
    h, p, s = _segments(good)
    sign = signer("RS256", RSA_KEY)
    return {
        "two segments": f"{h}.{p}",
        "four segments": f"{good}.{s}",
        "empty signature": f"{h}.{p}.",
        "empty header": f".{p}.{s}",
        "padded": f"{h}==.{p}.{s}",
        "standard base64": f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}+",
        "space": f"{h}.{p} .{s}",
        "non-canonical last char": f"{h}.{p}.{s[:-1]}{chr(ord(s[-1]) + 1)}",
        "json serialization": json.dumps({"payload": p, "protected": h, "signature": s}),
        "header is an array": compact(b'["RS256"]', claims(), sign),
        "header not utf-8": compact(b'{"alg":"RS256","kid":"\xff"}', claims(), sign),
        "duplicate alg": compact(b'{"alg":"RS256","alg":"HS256","kid":"rsa-1"}', claims(), sign),
        "no alg": compact({"kid": "rsa-1"}, claims(), sign),
        "alg not a string": compact({"alg": ["RS256"], "kid": "rsa-1"}, claims(), sign),
        "duplicate claim": token(
            payload=json.dumps(claims()).encode()[:-1] + b', "sub": "svc-admin"}'
        ),
        "NaN claim": token(payload=json.dumps(claims()).replace(f"{NOW + 300}", "NaN").encode()),
        "payload not json": token(payload=b"not json"),
        "payload an array": token(payload=b"[1, 2]"),
        "non-ascii": good + "é",
        "too long": token(payload=claims(pad="x" * 9000)),
    }


MALFORMED = _malformed()


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_tokens(name: str) -> None:
    assert refusal(verifier(), MALFORMED[name]).code == "malformed_token"


def test_tampering_breaks_the_signature() -> None:
    h, _, s = _segments(token())
    forged = b64(json.dumps(claims(sub="svc-admin")).encode())
    assert refusal(verifier(), f"{h}.{forged}.{s}").code == "bad_signature"
    longer = b64(b"\x00" + base64.urlsafe_b64decode(s + "=="))
    padded = f"{h}.{_segments(token())[1]}.{longer}"
    assert refusal(verifier(), padded).code == "bad_signature"  # RSA signature of wrong length
    other = compact({"alg": "RS256", "kid": "rsa-1"}, claims(), signer("RS256", ATTACKER_RSA))
    assert refusal(verifier(), other).code == "bad_signature"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_is_refused_with_a_jwt_error(text: str) -> None:
    assert isinstance(refusal(verifier(), text), JwtError)


GOOD = token()


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, len(GOOD) - 1),
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "),
)
def test_any_changed_character_is_refused(index: int, char: str) -> None:
    mutated = GOOD[:index] + char + GOOD[index + 1 :]
    if mutated != GOOD:
        assert refusal(verifier(), mutated).code in {
            "malformed_token", "bad_signature", "alg_not_allowed", "unknown_kid",
            "unsupported_header",
        }  # fmt: skip


# -- claims -----------------------------------------------------------------------------------


def test_exp_with_leeway() -> None:
    clock = Clock()
    v = verifier(clock=clock, leeway_s=30, cache_size=0)
    tok = token(payload=claims(exp=NOW))
    run(v.verify(tok))  # exp == now: within the 30 s leeway
    clock.now = NOW + 29.9
    run(v.verify(tok))
    clock.now = NOW + 30
    assert refusal(v, tok).code == "token_expired"
    assert isinstance(refusal(v, tok), TokenExpired)


def test_nbf_and_iat_in_the_future() -> None:
    v = verifier(leeway_s=60)
    run(v.verify(token(payload=claims(nbf=NOW + 60, iat=NOW + 60))))  # at the skew limit
    assert isinstance(refusal(v, token(payload=claims(nbf=NOW + 61))), TokenNotYetValid)
    assert isinstance(refusal(v, token(payload=claims(iat=NOW + 61))), TokenIssuedInFuture)
    strict = verifier(leeway_s=0)
    assert isinstance(refusal(strict, token(payload=claims(iat=NOW + 1))), TokenIssuedInFuture)


def test_leeway_is_at_most_60_seconds() -> None:
    with pytest.raises(ValueError, match="leeway"):
        verifier(leeway_s=61)
    with pytest.raises(SettingsError, match="RISKGUARD_JWT_LEEWAY_S"):
        load_gateway_settings(jwt_leeway_s=61)


def test_issuer_and_audience() -> None:
    v = verifier()
    assert isinstance(refusal(v, token(payload=claims(iss="https://evil.example"))), WrongIssuer)
    assert isinstance(refusal(v, token(payload=claims(iss=ISS + "/"))), WrongIssuer)
    assert isinstance(refusal(v, token(payload=claims(aud="other-service"))), WrongAudience)
    assert isinstance(refusal(v, token(payload=claims(aud=["a", "b"]))), WrongAudience)
    assert run(v.verify(token(payload=claims(aud=["a", AUD])))).audience == ("a", AUD)
    several = verifier(audience=["gw-eu", AUD])
    assert run(several.verify(token())).service_id == "svc-payments"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
def test_missing_required_claims(claim: str) -> None:
    error = refusal(verifier(), token(payload=claims(**{claim: _DROP})))
    assert isinstance(error, MissingClaim)
    assert (error.code, error.claim) == ("missing_claim", claim)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "1790000300"),
        ("exp", True),
        ("exp", [NOW + 300]),
        ("nbf", "yesterday"),
        ("iat", {}),
        ("iss", 7),
        ("aud", []),
        ("aud", [AUD, 1]),
        ("aud", {"aud": AUD}),
        ("sub", ""),
        ("sub", 42),
        ("sub", "svc\r\nX-Injected: 1"),
        ("sub", "s" * 257),
        ("jti", 5),
    ],
)
def test_claims_of_the_wrong_form(claim: str, value: Any) -> None:
    error = refusal(verifier(), token(payload=claims(**{claim: value})))
    assert isinstance(error, InvalidClaim)
    assert error.claim == claim


# -- the result cache -------------------------------------------------------------------------


def test_a_cached_token_still_expires() -> None:
    clock = Clock()
    v = verifier(clock=clock, leeway_s=0)
    tok = token(payload=claims(exp=NOW + 10))
    first = run(v.verify(tok))
    assert run(v.verify(tok)) is first  # served from the cache
    assert v.cached_tokens == 1
    clock.now = NOW + 10
    assert isinstance(refusal(v, tok), TokenExpired)
    assert v.cached_tokens == 0


def test_a_cached_token_dies_with_its_key() -> None:
    source = StaticKeys(KeySet.from_jwks(JWKS))
    v = JwtVerifier(source, issuer=ISS, audience=AUD, clock=Clock())
    tok = token("ES256")
    run(v.verify(tok))
    source.keys = KeySet.from_jwks({"keys": [k for k in JWKS["keys"] if k["kid"] != "ec-256"]})
    assert refusal(v, tok).code == "unknown_kid"


def test_the_cache_is_bounded() -> None:
    v = verifier(cache_size=3)
    for i in range(10):
        run(v.verify(token(payload=claims(jti=f"t-{i}"))))
        assert v.cached_tokens <= 3
    assert v.cached_tokens == 3


def test_refusals_are_not_cached() -> None:
    v = verifier()
    refusal(v, token(payload=claims(aud="other")))
    assert v.cached_tokens == 0


# -- key sets ---------------------------------------------------------------------------------


def test_key_sets_refuse_private_material_and_duplicate_kids() -> None:
    private = dict(JWKS["keys"][1], d=b64(bytes(32)))
    with pytest.raises(KeySetError, match="private"):
        KeySet.from_jwks({"keys": [private]})
    with pytest.raises(KeySetError, match="same 'kid'"):
        KeySet.from_jwks({"keys": [JWKS["keys"][0], JWKS["keys"][0]]})
    for document in ([], {"keys": {}}, {"keys": [1]}, "x"):
        with pytest.raises(KeySetError):
            KeySet.from_jwks(document)
    with pytest.raises(KeySetError, match="at most"):
        KeySet.from_jwks({"keys": [public_jwk(ED_KEY, f"k{i}") for i in range(101)]})


def test_unusable_keys_are_skipped_with_a_reason() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    entries = [
        public_jwk(ED_KEY, "enc", use="enc"),
        public_jwk(ED_KEY, "ops", key_ops=["encrypt"]),
        public_jwk(small, "small"),
        public_jwk(EC_KEYS["P-256"], "wrong-alg", alg="ES384"),
        public_jwk(EC_KEYS["P-256"], "no-alg", alg="ES224"),
        {"kty": "OKP", "crv": "X25519", "x": b64(bytes(32)), "kid": "x25519"},
        {"kty": "EC", "crv": "P-256", "x": b64(bytes(32)), "y": b64(bytes(32)), "kid": "off"},
        {"kty": "RSA", "n": "AQAB", "kid": "no-e"},
        {"kty": "XYZ", "kid": "kty"},
    ]
    keys = KeySet.from_jwks({"keys": [*entries, public_jwk(ED_KEY, "good")]})
    assert [k.kid for k in keys.keys] == ["good"]
    assert {s.kid for s in keys.skipped} == {e["kid"] for e in entries}


def test_unchanged_keys_are_reused_across_refreshes() -> None:
    first = KeySet.from_jwks(JWKS)
    second = KeySet.from_jwks(JWKS, previous=first)
    assert all(a is b for a, b in zip(first.keys, second.keys, strict=True))
    changed = {"keys": [public_jwk(ATTACKER_RSA, "rsa-1"), *JWKS["keys"][1:]]}
    third = KeySet.from_jwks(changed, previous=second)
    assert third.find("rsa-1", "RS256") is not second.find("rsa-1", "RS256")
    assert third.find("ec-256", "ES256") is second.find("ec-256", "ES256")


# -- transport --------------------------------------------------------------------------------


def test_bearer_token_from_the_authorization_header() -> None:
    assert bearer_token([f"Bearer {GOOD}"]) == GOOD
    assert bearer_token([f"bearer  {GOOD} "]) == GOOD
    assert bearer_token([f"BEARER {GOOD}".encode()]) == GOOD
    with pytest.raises(MissingToken):
        bearer_token([])
    for values in (
        ["Basic dXNlcjpwYXNz"],
        ["Bearer"],
        ["Bearer "],
        [f"Bearer {GOOD} extra"],
        [f"Token {GOOD}"],
        [f"Bearer {GOOD}", f"Bearer {GOOD}"],
        ["Bearer a\x00b"],
    ):
        with pytest.raises(MalformedAuthorization):
            bearer_token(values)


@pytest.mark.parametrize(
    "query",
    [
        "access_token=abc",
        "ACCESS_TOKEN=abc",
        "a=1&id_token=abc",
        "%61ccess_token=abc",
        "jwt=abc",
        f"q={GOOD}",
        f"redirect=x&t={GOOD}",
        f"q={GOOD}".encode(),
    ],
)
def test_a_token_in_the_url_is_refused(query: str | bytes) -> None:
    with pytest.raises(TokenInUrl) as info:
        refuse_token_in_url(query)
    assert info.value.code == "token_in_url"


@pytest.mark.parametrize("query", ["", "page=2&size=50", "token_type=bearer", "q=eyJ", "sort=-a"])
def test_ordinary_queries_pass(query: str) -> None:
    refuse_token_in_url(query)


def test_errors_have_stable_codes_statuses_and_challenges() -> None:
    codes = {
        cls.__name__: (cls.code, cls.status)
        for cls in (
            MissingToken, MalformedAuthorization, TokenInUrl, MalformedToken,
            AlgorithmNotAllowed, UnsupportedHeader, UnknownKid, BadSignature, TokenExpired,
            TokenNotYetValid, TokenIssuedInFuture, WrongIssuer, WrongAudience, KeysUnavailable,
        )
    }  # fmt: skip
    assert codes == {
        "MissingToken": ("missing_token", 401),
        "MalformedAuthorization": ("malformed_authorization", 401),
        "TokenInUrl": ("token_in_url", 401),
        "MalformedToken": ("malformed_token", 401),
        "AlgorithmNotAllowed": ("alg_not_allowed", 401),
        "UnsupportedHeader": ("unsupported_header", 401),
        "UnknownKid": ("unknown_kid", 401),
        "BadSignature": ("bad_signature", 401),
        "TokenExpired": ("token_expired", 401),
        "TokenNotYetValid": ("token_not_yet_valid", 401),
        "TokenIssuedInFuture": ("token_issued_in_future", 401),
        "WrongIssuer": ("wrong_issuer", 401),
        "WrongAudience": ("wrong_audience", 401),
        "KeysUnavailable": ("keys_unavailable", 503),
    }
    assert (MissingClaim("sub").code, InvalidClaim("sub").code) == (
        "missing_claim",
        "invalid_claim",
    )
    assert MissingToken().www_authenticate == 'Bearer realm="riskguard"'
    assert BadSignature().www_authenticate == 'Bearer realm="riskguard", error="invalid_token"'
    assert TokenInUrl().www_authenticate.endswith('error="invalid_request"')
    # messages are fixed texts: nothing from the token or the keys
    assert str(BadSignature()) == "the token's signature does not verify"


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    monkeypatch.setenv("RISKGUARD_JWT_KEYS_FILE", str(path))
    monkeypatch.setenv("RISKGUARD_JWT_ISSUER", ISS)
    monkeypatch.setenv("RISKGUARD_JWT_AUDIENCE", f"gw-eu, {AUD}")
    monkeypatch.setenv("RISKGUARD_JWT_LEEWAY_S", "15")
    settings = load_gateway_settings()
    assert settings.jwt_audience == ["gw-eu", AUD]
    v = build_verifier(settings)
    assert v.leeway_s == 15
    assert v.audiences == {"gw-eu", AUD}
    tok = token("EdDSA", payload=live_claims())
    assert run(v.verify(tok)).service_id == "svc-payments"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jwt_jwks_url": "https://idp/jwks", "jwt_keys_file": "/k.json"}, "not both"),
        ({"jwt_jwks_url": "https://idp/jwks"}, "ISSUER and RISKGUARD_JWT_AUDIENCE"),
        ({"jwt_jwks_url": "http://idp.example/jwks"}, "https"),
        ({"jwt_jwks_url": "http://10.0.0.8/jwks"}, "https"),
        ({"jwt_jwks_url": "ftp://idp.example/jwks"}, "not supported"),
        ({"env": "production", "jwt_jwks_url": "http://127.0.0.1:9/jwks"}, "https"),
        ({"jwt_algorithms": "RS256,XS999"}, "unknown JWS algorithms"),
        ({"jwt_jwks_ttl_s": 600, "jwt_jwks_max_stale_s": 300}, "MAX_STALE"),
        ({"ratelimit_backend": "redis"}, "REDIS_URL"),
    ],
)
def test_settings_refused(overrides: dict[str, Any], message: str) -> None:
    overrides = {"jwt_issuer": ISS, "jwt_audience": AUD, **overrides}
    if "ISSUER" in message:
        overrides.pop("jwt_issuer")
    with pytest.raises(SettingsError, match=message):
        load_gateway_settings(**overrides)


def test_settings_accepted() -> None:
    dev = load_gateway_settings(
        jwt_jwks_url="http://127.0.0.1:8080/jwks", jwt_issuer=ISS, jwt_audience=AUD
    )
    assert dev.identity_configured
    prod = load_gateway_settings(
        env="production", jwt_jwks_url="https://idp/jwks", jwt_issuer=ISS, jwt_audience=AUD
    )
    assert prod.jwt_algorithms == list(gw.DEFAULT_ALGORITHMS)
    assert prod.rate_limit.burst == 200


def test_a_gateway_without_keys_does_not_start() -> None:
    with pytest.raises(SettingsError, match="needs RISKGUARD_JWT_JWKS_URL"):
        build_verifier(GatewaySettings())


def test_a_keys_file_with_private_keys_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [dict(JWKS["keys"][1], d=b64(bytes(32)))]}))
    with pytest.raises(SettingsError, match="private key material"):
        build_verifier(GatewaySettings(jwt_keys_file=path, jwt_issuer=ISS, jwt_audience=AUD))
    with pytest.raises(SettingsError, match="cannot read"):
        build_verifier(
            GatewaySettings(
                jwt_keys_file=tmp_path / "absent.json", jwt_issuer=ISS, jwt_audience=AUD
            )
        )

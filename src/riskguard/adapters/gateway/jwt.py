"""JWT verification for the gateway: one bearer token per request, checked in full, fast.

What a token must pass, in order (each failure is a :class:`JwtError` with a stable ``code``):

1. **Transport.** Only ``Authorization: Bearer <token>`` (:func:`bearer_token`); a token-like
   query parameter refuses the request (:func:`refuse_token_in_url`).
2. **Shape.** JWS compact serialization — exactly three strict base64url segments (no padding,
   no other characters, canonical trailing bits), a header and a payload that are UTF-8 JSON
   objects without duplicate members, at most ``max_token_bytes``.
3. **Header policy.** ``alg`` in the configured allow-list (``none`` is never in it, in any letter
   case); ``crit`` is refused (no extension is understood) and so is ``b64`` other than true;
   ``jwk``, ``jku``, ``x5u``, ``x5c`` and ``x5t`` are ignored — keys come only from our key set.
4. **Key.** ``kid`` is looked up in our key set and nowhere else (a dictionary lookup: a kid
   that looks like a path or SQL is just an unknown kid). Each key carries the algorithms bound
   to its type, so a token can only name an algorithm its key was made for (no HS/RS confusion:
   an RSA or EC key is never used as an HMAC secret).
5. **Signature**, by joserfc's algorithm implementations over ``cryptography``.
6. **Claims** (:class:`JwtVerifier` only): ``exp`` required, ``nbf`` and ``iat`` when present,
   all with at most 60 s of skew; ``iss`` and ``aud`` required and equal to the configured ones;
   ``sub`` required — the calling service's id.

:func:`verify_jws` stops after step 5 (signature and header policy only, for conformance vectors
that carry no claims); the gateway uses :class:`JwtVerifier`, which has no way to skip step 6.

Errors (``status`` 401 unless noted; ``code`` is stable, ``str(err)`` is safe to show)::

    JwtError
    ├── MissingToken            missing_token            no Authorization header
    ├── MalformedAuthorization  malformed_authorization  not one "Bearer <token68>"
    ├── TokenInUrl              token_in_url             a token in the query string
    ├── MalformedToken          malformed_token          not a well-formed compact JWS/JWT
    ├── AlgorithmNotAllowed     alg_not_allowed          alg not allowed (globally or for the key)
    ├── UnsupportedHeader       unsupported_header       crit / b64 present
    ├── UnknownKid              unknown_kid              no key of ours for the token
    ├── BadSignature            bad_signature
    ├── TokenExpired            token_expired
    ├── TokenNotYetValid        token_not_yet_valid      nbf in the future beyond the leeway
    ├── TokenIssuedInFuture     token_issued_in_future   iat in the future beyond the leeway
    ├── MissingClaim            missing_claim            exp, iss, aud or sub absent
    ├── InvalidClaim            invalid_claim            a claim of the wrong type or form
    ├── WrongIssuer             wrong_issuer
    ├── WrongAudience           wrong_audience
    └── KeysUnavailable         keys_unavailable         (503) no usable key set (JWKS down)
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}  # curve -> its one alg
OKP_ALGORITHMS = {"Ed25519": frozenset({"EdDSA", "Ed25519"})}  # RFC 8037 name and RFC 9864 name
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}  # alg -> minimum key bytes (RFC 7518)
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
)  # fmt: skip
KNOWN_ALGORITHMS = frozenset(ASYMMETRIC_ALGORITHMS) | frozenset(HMAC_ALGORITHMS)
DEFAULT_ALGORITHMS = ASYMMETRIC_ALGORITHMS  # HS* only when a symmetric key is configured
MAX_LEEWAY_S = 60.0
MAX_KID_CHARS = 256
MAX_KEYS = 100  # a key set larger than this is refused (bounds memory and parse time)
MIN_RSA_BITS = 2048
UNDERSTOOD_CRIT: frozenset[str] = frozenset()  # no JWS extension is implemented
_PRIVATE_MEMBERS = {
    "RSA": ("d", "p", "q", "dp", "dq", "qi", "oth"),
    "EC": ("d",),
    "OKP": ("d",),
}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_URL_TOKEN_NAMES = frozenset({"access_token", "id_token", "jwt", "bearer", "bearer_token"})
_JWS_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


# --------------------------------------------------------------------------------------------
# Errors


class JwtError(Exception):
    """A request whose credentials cannot be accepted; ``code`` is stable, the message safe."""

    code: ClassVar[str] = "invalid_token"
    status: ClassVar[int] = 401
    bearer_error: ClassVar[str] = "invalid_token"  # RFC 6750 error code ("" = none)
    default_detail: ClassVar[str] = "the bearer token is not valid"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.default_detail)

    @property
    def detail(self) -> str:
        return str(self)

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` value of the 401 answer (RFC 6750 section 3)."""
        if not self.bearer_error:
            return 'Bearer realm="riskguard"'
        return f'Bearer realm="riskguard", error="{self.bearer_error}"'


class MissingToken(JwtError):
    code = "missing_token"
    bearer_error = ""
    default_detail = "a bearer token is required"


class MalformedAuthorization(JwtError):
    code = "malformed_authorization"
    bearer_error = "invalid_request"
    default_detail = "the Authorization header must be exactly one 'Bearer <token>'"


class TokenInUrl(JwtError):
    code = "token_in_url"
    bearer_error = "invalid_request"
    default_detail = "tokens are accepted only in the Authorization header, never in the URL"


class MalformedToken(JwtError):
    code = "malformed_token"
    default_detail = "the token is not a well-formed JWT"


class AlgorithmNotAllowed(JwtError):
    code = "alg_not_allowed"
    default_detail = "the token's algorithm is not allowed"


class UnsupportedHeader(JwtError):
    code = "unsupported_header"
    default_detail = "the token uses a header extension that is not supported"


class UnknownKid(JwtError):
    code = "unknown_kid"
    default_detail = "the token's key is not known"


class BadSignature(JwtError):
    code = "bad_signature"
    default_detail = "the token's signature does not verify"


class TokenExpired(JwtError):
    code = "token_expired"
    default_detail = "the token has expired"


class TokenNotYetValid(JwtError):
    code = "token_not_yet_valid"
    default_detail = "the token is not valid yet"


class TokenIssuedInFuture(JwtError):
    code = "token_issued_in_future"
    default_detail = "the token was issued in the future"


class MissingClaim(JwtError):
    code = "missing_claim"

    def __init__(self, claim: str) -> None:
        self.claim = claim
        super().__init__(f"the token has no '{claim}' claim")


class InvalidClaim(JwtError):
    code = "invalid_claim"

    def __init__(self, claim: str) -> None:
        self.claim = claim
        super().__init__(f"the token's '{claim}' claim is not valid")


class WrongIssuer(JwtError):
    code = "wrong_issuer"
    default_detail = "the token was not issued by the expected issuer"


class WrongAudience(JwtError):
    code = "wrong_audience"
    default_detail = "the token is not meant for this audience"


class KeysUnavailable(JwtError):
    code = "keys_unavailable"
    status = 503
    bearer_error = ""
    default_detail = "the verification keys are unavailable; try again later"


class KeySetError(ValueError):
    """A key set document that must not be used at all (the message says why)."""


# --------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True, slots=True, eq=False)
class VerificationKey:
    """One parsed public (or explicitly configured HMAC) key and the algorithms bound to it."""

    kid: str | None
    kty: str
    algorithms: frozenset[str]
    key: RSAKey | ECKey | OKPKey | OctKey
    signature_bytes: int  # exact signature length for RSA (modulus bytes); 0 = checked by alg
    source: str  # canonical JSON of the JWK (reused across refreshes when unchanged)


@dataclass(frozen=True, slots=True)
class SkippedKey:
    kid: str | None
    reason: str


class KeySet:
    """An immutable set of verification keys, found by ``kid`` only.

    Built from a JWKS document by :meth:`from_jwks`, which refuses the whole document when it
    carries private key material, mixes secret (``oct``) keys with public ones or repeats a
    ``kid`` (signs of a misconfigured or tampered set) and skips, with a reason in
    :attr:`skipped`, keys that cannot verify signatures here: other ``use``/``key_ops``,
    unsupported types or curves, an ``alg`` that is unknown or does not fit the key, RSA under
    2048 bits or with a bad exponent or the ROCA fingerprint, HMAC keys shorter than their hash
    or not explicitly allowed.
    """

    __slots__ = ("_anonymous", "_by_kid", "keys", "skipped")

    def __init__(self, keys: Iterable[VerificationKey], skipped: Iterable[SkippedKey] = ()):
        self.keys = tuple(keys)
        self.skipped = tuple(skipped)
        self._by_kid = {k.kid: k for k in self.keys if k.kid is not None}
        self._anonymous = tuple(k for k in self.keys if k.kid is None)

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The key named ``kid``; without a kid, the only key that verifies ``alg``, if one."""
        if kid is not None:
            return self._by_kid.get(kid)
        candidates = [k for k in self.keys if alg in k.algorithms]
        return candidates[0] if len(candidates) == 1 else None

    def holds(self, key: VerificationKey) -> bool:
        """Whether ``key`` (this very object) is still in the set."""
        if key.kid is not None:
            return self._by_kid.get(key.kid) is key
        return any(k is key for k in self._anonymous)

    @classmethod
    def from_jwks(
        cls,
        document: object,
        *,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        allow_symmetric: bool = False,
        previous: KeySet | None = None,
    ) -> KeySet:
        """Parse a JWKS (``{"keys": [...]}``) into a key set; see the class docstring."""
        allowed = check_algorithms(algorithms)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise KeySetError("a JWKS must be a JSON object with a 'keys' array")
        entries = document["keys"]
        if len(entries) > MAX_KEYS:
            raise KeySetError(f"a JWKS may hold at most {MAX_KEYS} keys")
        kinds = {e.get("kty") == "oct" for e in entries if isinstance(e, dict)}
        if len(kinds) > 1:
            raise KeySetError("the JWKS mixes symmetric (secret) keys with public keys")
        reuse = {k.source: k for k in previous.keys} if previous is not None else {}
        keys: list[VerificationKey] = []
        skipped: list[SkippedKey] = []
        seen: set[str | None] = set()
        for entry in entries:
            if not isinstance(entry, dict):
                raise KeySetError("every JWKS entry must be a JSON object")
            kid = entry.get("kid")
            if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
                raise KeySetError("a 'kid' must be a string of at most 256 characters")
            if kid in seen:
                raise KeySetError("the JWKS holds two keys with the same 'kid'")
            seen.add(kid)
            kty = entry.get("kty")
            if any(m in entry for m in _PRIVATE_MEMBERS.get(str(kty), ())):
                raise KeySetError("the JWKS holds private key material; publish public keys only")
            source = json.dumps(entry, sort_keys=True, separators=(",", ":"))
            known = reuse.get(source)
            if known is not None and known.algorithms <= allowed:
                keys.append(known)
                continue
            try:
                keys.append(_parse_key(entry, kid, allowed, allow_symmetric, source))
            except _Unusable as exc:
                skipped.append(SkippedKey(kid, str(exc)))
        return cls(keys, skipped)

    @classmethod
    def from_json(cls, data: bytes | str, **kwargs: Any) -> KeySet:
        try:
            document = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise KeySetError(f"the JWKS is not JSON: {type(exc).__name__}") from None
        return cls.from_jwks(document, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> KeySet:
        """Keys configured in a JWKS file; HMAC keys allowed only via ``allow_symmetric``."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeySetError(f"cannot read the JWKS file {path}: {exc.strerror}") from None
        return cls.from_json(data, **kwargs)


class _Unusable(Exception):
    """A key this verifier will not use (the message is the reason)."""


def check_algorithms(algorithms: Collection[str]) -> frozenset[str]:
    """The allow-list as a set, refusing ``none`` (in any case) and names we do not know."""
    allowed = frozenset(algorithms)
    if any(a.lower() == "none" for a in allowed):
        raise ValueError("the algorithm 'none' can never be allowed")
    unknown = allowed - KNOWN_ALGORITHMS
    if unknown:
        raise ValueError(
            f"unknown JWS algorithms {sorted(unknown)}; known: {sorted(KNOWN_ALGORITHMS)}"
        )
    if not allowed:
        raise ValueError("at least one algorithm must be allowed")
    return allowed


def _parse_key(
    entry: dict[str, Any], kid: str | None, allowed: frozenset[str], symmetric: bool, source: str
) -> VerificationKey:
    use = entry.get("use")
    if use is not None and use != "sig":
        raise _Unusable(f"'use' is {use!r}, not 'sig'")
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise _Unusable("'key_ops' does not include 'verify'")
    alg = entry.get("alg")
    if alg is not None and alg not in KNOWN_ALGORITHMS:
        raise _Unusable(f"'alg' {alg!r} is not a JWS signature algorithm supported here")
    kty = entry.get("kty")
    signature_bytes = 0
    key: RSAKey | ECKey | OKPKey | OctKey
    try:
        # joserfc warns about weak keys; here any such warning refuses the key
        with warnings.catch_warnings():
            warnings.simplefilter("error", SecurityWarning)
            if kty == "RSA":
                bound = RSA_ALGORITHMS
                key = RSAKey.import_key(entry)
                signature_bytes = _check_rsa(key.public_key)
            elif kty == "EC":
                crv = entry.get("crv")
                if crv not in EC_ALGORITHMS:
                    raise _Unusable(f"EC curve {crv!r} is not supported")
                bound = frozenset({EC_ALGORITHMS[crv]})
                key = ECKey.import_key(entry)
            elif kty == "OKP":
                crv = entry.get("crv")
                if crv not in OKP_ALGORITHMS:
                    raise _Unusable(f"OKP curve {crv!r} is not supported")
                bound = OKP_ALGORITHMS[crv]
                key = OKPKey.import_key(entry)
            elif kty == "oct":
                if not symmetric:
                    raise _Unusable("symmetric keys are not allowed from this source")
                raw = _b64url_decode_key(entry.get("k"))
                bound = frozenset(a for a, n in HMAC_ALGORITHMS.items() if len(raw) >= n)
                if not bound or (alg in HMAC_ALGORITHMS and alg not in bound):
                    raise _Unusable("the HMAC key is shorter than its hash output")
                key = OctKey.import_key(entry)
            else:
                raise _Unusable(f"key type {kty!r} is not supported")
    except _Unusable:
        raise
    except Exception as exc:  # joserfc/cryptography refuse malformed keys in many ways
        raise _Unusable(f"the key does not parse ({type(exc).__name__})") from None
    algorithms = bound & allowed
    if alg is not None:
        if alg not in bound:
            raise _Unusable(f"'alg' {alg} does not fit a {kty} key")
        algorithms &= {alg}
    if not algorithms:
        raise _Unusable("none of the allowed algorithms fits this key")
    return VerificationKey(kid, str(kty), algorithms, key, signature_bytes, source)


def _check_rsa(public: object) -> int:
    if not isinstance(public, RSAPublicKey):
        raise _Unusable("not an RSA public key")
    numbers = public.public_numbers()
    if public.key_size < MIN_RSA_BITS:
        raise _Unusable(f"RSA keys under {MIN_RSA_BITS} bits are refused")
    if numbers.e < 3 or numbers.e % 2 == 0:
        raise _Unusable("the RSA public exponent must be odd and at least 3")
    if _roca_fingerprint(numbers.n):
        raise _Unusable("the RSA modulus has the ROCA fingerprint (CVE-2017-15361)")
    return (public.key_size + 7) // 8


# Moduli made by the vulnerable Infineon library (ROCA) are powers of 65537 modulo each of these
# primes (those under 167 where 65537 generates a proper subgroup); a random modulus passes all
# of them with probability about 2^-28. The check runs once per key load.
_ROCA_PRIMES = (
    11, 13, 17, 19, 37, 53, 61, 71, 73, 79, 97, 103, 107, 109, 127, 151, 157,
)  # fmt: skip
_ROCA_SUBGROUPS = {p: frozenset(pow(65537, k, p) for k in range(p)) for p in _ROCA_PRIMES}


def _roca_fingerprint(n: int) -> bool:
    return all(n % p in _ROCA_SUBGROUPS[p] for p in _ROCA_PRIMES)


def _b64url_decode_key(value: object) -> bytes:
    if not isinstance(value, str):
        raise _Unusable("'k' must be a base64url string")
    try:
        return b64url_decode(value)
    except ValueError:
        raise _Unusable("'k' is not base64url") from None


# --------------------------------------------------------------------------------------------
# Compact JWS


def b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 section 2): anything else raises ValueError."""
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    # a final group of 1 or 2 bytes leaves unused bits in the last character: they must be zero
    tail = len(raw) % 3
    if tail and base64.urlsafe_b64encode(raw[-tail:])[tail] != ord(segment[-1]):
        raise ValueError("non-canonical base64url")
    return raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member")
    return obj


# JSON as RFC 8259 has it: no NaN/Infinity, no duplicate member (built once: json.loads with
# keywords would build a decoder per call)
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_reject_constant)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise MalformedToken() from None
    if not isinstance(value, dict):
        raise MalformedToken()
    return value


@dataclass(frozen=True, slots=True)
class ParsedJws:
    """A compact JWS whose shape and header policy passed; its signature is not checked yet."""

    header: Mapping[str, Any]
    alg: str
    kid: str | None
    signing_input: bytes
    payload: bytes
    signature: bytes


def parse_compact(token: str, algorithms: frozenset[str], max_bytes: int = 8192) -> ParsedJws:
    """Steps 2 and 3 of the module docstring: shape and header policy."""
    if not isinstance(token, str) or len(token) > max_bytes or not token.isascii():
        raise MalformedToken()
    parts = token.split(".")
    if len(parts) != 3 or not parts[0]:
        raise MalformedToken()
    try:
        header_raw = b64url_decode(parts[0])
    except ValueError:
        raise MalformedToken() from None
    header = _json_object(header_raw)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise MalformedToken("the token has no 'alg' header")
    if alg not in algorithms:  # "none" is never in it (check_algorithms)
        raise AlgorithmNotAllowed()
    if "crit" in header and not (
        isinstance(header["crit"], list)
        and header["crit"]
        and all(isinstance(c, str) and c in UNDERSTOOD_CRIT for c in header["crit"])
    ):
        raise UnsupportedHeader("the token's 'crit' names extensions that are not understood")
    if header.get("b64", True) is not True:
        raise UnsupportedHeader("unencoded payloads (b64) are not supported")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_CHARS):
        raise MalformedToken("the token's 'kid' is not a short string")
    try:
        payload = b64url_decode(parts[1])
        signature = b64url_decode(parts[2])
    except ValueError:
        raise MalformedToken() from None
    if not signature:
        raise MalformedToken("the token has no signature")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return ParsedJws(header, alg, kid, signing_input, payload, signature)


def check_signature(parsed: ParsedJws, key: VerificationKey) -> None:
    """Step 5: the algorithm must be bound to the key, then the signature must verify."""
    if parsed.alg not in key.algorithms:
        raise AlgorithmNotAllowed("the token's algorithm is not allowed for its key")
    if key.signature_bytes and len(parsed.signature) != key.signature_bytes:
        raise BadSignature()
    model = JWSRegistry.algorithms[parsed.alg]
    if not model.verify(parsed.signing_input, parsed.signature, key.key):
        raise BadSignature()


@dataclass(frozen=True, slots=True)
class VerifiedJws:
    header: Mapping[str, Any]
    payload: bytes
    key: VerificationKey


def verify_jws(
    token: str, keys: KeySet, *, algorithms: Collection[str] = DEFAULT_ALGORITHMS
) -> VerifiedJws:
    """Signature and header policy only — no claims. For conformance vectors and tools; request
    authentication goes through :class:`JwtVerifier`."""
    parsed = parse_compact(token, check_algorithms(algorithms))
    key = keys.find(parsed.kid, parsed.alg)
    if key is None:
        raise UnknownKid()
    check_signature(parsed, key)
    return VerifiedJws(parsed.header, parsed.payload, key)


# --------------------------------------------------------------------------------------------
# Claims and the verifier


@dataclass(frozen=True, slots=True)
class Identity:
    """Who called: the verified token's subject and what else the gateway may need."""

    service_id: str  # the token's `sub`
    issuer: str
    audience: tuple[str, ...]
    expires_at: float
    issued_at: float | None
    token_id: str | None  # `jti`, when present
    kid: str | None
    alg: str
    claims: Mapping[str, Any]


class KeySource(Protocol):
    """Where the verifier's keys come from: a fixed :class:`StaticKeys` or a JWKS cache."""

    def current(self) -> KeySet | None:
        """The key set in use now, without waiting (None: none usable)."""
        ...

    async def key_for(self, kid: str | None, alg: str) -> VerificationKey:
        """The key for a token; raises :class:`UnknownKid` or :class:`KeysUnavailable`."""
        ...


class StaticKeys:
    """Keys configured once (a JWKS file): never refreshed."""

    def __init__(self, keys: KeySet) -> None:
        if not keys:
            raise KeySetError("the key set holds no usable key")
        self.keys = keys

    def current(self) -> KeySet:
        return self.keys

    async def key_for(self, kid: str | None, alg: str) -> VerificationKey:
        key = self.keys.find(kid, alg)
        if key is None:
            raise UnknownKid()
        return key


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidClaim(name)
    return float(value)


class JwtVerifier:
    """Verifies a bearer token in full (signature, header policy, claims) into an Identity.

    Successful results are cached by token string (at most ``cache_size`` entries, oldest
    evicted first): a hit re-checks ``exp`` against the clock and that the token's key is still
    in the current key set, which is everything that can change between two verifications of
    the same token (``nbf`` and ``iat`` only become more valid with time), so a hit answers
    exactly what a full verification would. Memory is bounded by
    ``cache_size * max_token_bytes``.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str | Collection[str],
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway_s: float = 30.0,
        max_token_bytes: int = 8192,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not issuer:
            raise ValueError("an issuer is required")
        audiences = frozenset([audience] if isinstance(audience, str) else audience)
        if not audiences or not all(audiences):
            raise ValueError("at least one audience is required")
        if not 0 <= leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"the leeway must be between 0 and {MAX_LEEWAY_S:g} seconds")
        self.keys = keys
        self.issuer = issuer
        self.audiences = audiences
        self.algorithms = check_algorithms(algorithms)
        self.leeway_s = float(leeway_s)
        self.max_token_bytes = max_token_bytes
        self.cache_size = cache_size
        self.clock = clock
        self._cache: dict[str, tuple[Identity, VerificationKey]] = {}

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)

    async def verify(self, token: str) -> Identity:
        """The caller's identity, or a :class:`JwtError` saying why not."""
        hit = self._cache.get(token)
        if hit is not None:
            identity, key = hit
            current = self.keys.current()
            if current is not None and current.holds(key):
                if self.clock() >= identity.expires_at + self.leeway_s:
                    del self._cache[token]
                    raise TokenExpired()
                return identity
            del self._cache[token]
        parsed = parse_compact(token, self.algorithms, self.max_token_bytes)
        key = await self.keys.key_for(parsed.kid, parsed.alg)
        check_signature(parsed, key)
        identity = self._claims(parsed, key)
        if self.cache_size > 0:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = (identity, key)
        return identity

    def _claims(self, parsed: ParsedJws, key: VerificationKey) -> Identity:
        claims = _json_object(parsed.payload)
        now = self.clock()
        exp = _number(claims, "exp")
        if exp is None:
            raise MissingClaim("exp")
        nbf = _number(claims, "nbf")
        iat = _number(claims, "iat")
        iss = claims.get("iss")
        if iss is None:
            raise MissingClaim("iss")
        aud = claims.get("aud")
        if aud is None:
            raise MissingClaim("aud")
        sub = claims.get("sub")
        if sub is None:
            raise MissingClaim("sub")
        if not isinstance(iss, str):
            raise InvalidClaim("iss")
        audience = (aud,) if isinstance(aud, str) else aud
        if not isinstance(audience, list | tuple) or not audience:
            raise InvalidClaim("aud")
        if not all(isinstance(a, str) for a in audience):
            raise InvalidClaim("aud")
        if not isinstance(sub, str) or not sub or len(sub) > 256 or not sub.isprintable():
            raise InvalidClaim("sub")  # it becomes a header value and a feature key
        jti = claims.get("jti")
        if jti is not None and not isinstance(jti, str):
            raise InvalidClaim("jti")
        if now >= exp + self.leeway_s:
            raise TokenExpired()
        if nbf is not None and now + self.leeway_s < nbf:
            raise TokenNotYetValid()
        if iat is not None and now + self.leeway_s < iat:
            raise TokenIssuedInFuture()
        if iss != self.issuer:
            raise WrongIssuer()
        if self.audiences.isdisjoint(audience):
            raise WrongAudience()
        return Identity(
            service_id=sub,
            issuer=iss,
            audience=tuple(audience),
            expires_at=exp,
            issued_at=iat,
            token_id=jti,
            kid=parsed.kid,
            alg=parsed.alg,
            claims=MappingProxyType(claims),
        )


# --------------------------------------------------------------------------------------------
# Transport


def bearer_token(values: Iterable[str | bytes]) -> str:
    """The token of the request's ``Authorization`` header values (all of them: two headers are
    ambiguous and refused). ``Bearer`` is matched case-insensitively, as RFC 7235 says."""
    found = list(values)
    if not found:
        raise MissingToken()
    if len(found) > 1:
        raise MalformedAuthorization()
    value = found[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not _TOKEN68.fullmatch(token):
        raise MalformedAuthorization()
    return token


def refuse_token_in_url(query: str | bytes) -> None:
    """Raise :class:`TokenInUrl` when the query string carries a credential: a parameter named
    like one (``access_token``, ``id_token``, ``jwt``, ...) or any value shaped like a JWS."""
    if not query:
        return
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name.lower() in _URL_TOKEN_NAMES or _JWS_LIKE.fullmatch(value.strip()):
            raise TokenInUrl()

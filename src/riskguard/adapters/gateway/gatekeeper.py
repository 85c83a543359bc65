"""The checks every request passes, shared by the proxy and ``POST /v1/authorize``.

In order, each able to stop the request:

1. **Transport of the credential**: a token-like query parameter is refused (401
   ``token_in_url``); only ``Authorization: Bearer`` counts.
2. **Identity**: the JWT is verified in full (``jwt.py``); the caller's service id is its
   subject. Failures answer 401 with ``WWW-Authenticate`` (503 when no key set is usable).
3. **Method**: one of the methods the ``api_call`` event knows (405 otherwise).
4. **Rate limit**: GCRA per (service, route) — and per service over all routes when
   ``service_rate_limit`` is configured; 429 with ``Retry-After``. A shared limiter that is down
   fails open (logged), as an unavailable state store does for the risk decision.
5. **Risk** (``risk.py``): ``allow`` passes with headers the upstream can trust;
   ``challenge`` → 401 with a step-up ``WWW-Authenticate`` (RFC 9470's
   ``insufficient_user_authentication``); ``review`` → what ``risk.review`` says (403 by
   default: no human is waiting on a live request); ``block`` → 403. Every denial carries the
   decision id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from riskguard.adapters.gateway.config import RateLimitConfig, RiskConfig
from riskguard.adapters.gateway.jwt import JwtError, JwtVerifier, bearer_token, refuse_token_in_url
from riskguard.adapters.gateway.ratelimit import RateLimit, RateLimiter
from riskguard.adapters.gateway.risk import ApiCall, GatewayRisk, deployment_of, usable_id
from riskguard.adapters.gateway.routes import HTTP_METHODS, RouteCatalog
from riskguard.adapters.http.problems import PROBLEM_BASE, SLUGS, TITLES
from riskguard.engine.policy import Outcome
from riskguard.ports import DependencyUnavailable
from riskguard.services.rules import NotFoundError

log = structlog.get_logger("riskguard.gateway")

SUBJECT = b"x-riskguard-subject"
DECISION = b"x-riskguard-decision"
OUTCOME = b"x-riskguard-outcome"
DEPLOYMENT = b"x-riskguard-deployment"
TRUSTED_PREFIX = b"x-riskguard-"  # every incoming header with it is dropped, never forwarded
_METHODS = frozenset(HTTP_METHODS)
_TITLES = {
    **TITLES,
    405: "Method not allowed",
    501: "Not implemented",
    502: "Bad gateway",
    504: "Gateway timeout",
}
_SLUGS = {**SLUGS, 501: "not-implemented", 502: "bad-gateway", 504: "gateway-timeout"}
_STEP_UP = (
    'Bearer realm="riskguard", error="insufficient_user_authentication", '
    'error_description="this call needs step-up verification; decision {id}"'
)


def problem_body(
    status: int,
    detail: str | None,
    *,
    request_id: str | None = None,
    decision_id: str | None = None,
    slug: str | None = None,
) -> bytes:
    """An RFC 9457 problem (``application/problem+json``), with the decision id when there is
    one."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (slug or _SLUGS.get(status, "error")),
        "title": _TITLES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if request_id:
        body["request_id"] = request_id
    if decision_id:
        body["decision_id"] = decision_id
    return orjson.dumps(body)


@dataclass(slots=True)
class Check:
    """One request as the gatekeeper sees it."""

    method: str
    path: str  # the path at the target (decoded; the route prefix stripped when configured)
    target: str  # the upstream's name
    catalog: RouteCatalog
    route_key: str  # rate-limit key of the route
    rate_limit: RateLimit
    authorization: list[bytes]
    query: bytes = b""
    ip: str | None = None
    user_agent: str | None = None
    request_bytes: int | None = None


@dataclass(slots=True)
class Verdict:
    """Pass (``allowed``; ``headers`` go to the upstream) or an answer (``status``, ``detail``,
    ``headers`` go to the caller)."""

    allowed: bool
    status: int = 200
    detail: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    decision_id: str | None = None
    outcome: str | None = None
    subject: str | None = None
    slug: str | None = None


def rate_limit_of(config: RateLimitConfig | None, default: RateLimit) -> RateLimit:
    return default if config is None else RateLimit(config.rate_per_s, config.burst)


class Gatekeeper:
    """Identity, rate limit and risk for one request (see the module docstring)."""

    def __init__(
        self,
        *,
        verifier: JwtVerifier,
        limiter: RateLimiter,
        risk: GatewayRisk | None,
        policy: RiskConfig,
        service_limit: RateLimit | None = None,
    ) -> None:
        self.verifier = verifier
        self.limiter = limiter
        self.risk = risk
        self.policy = policy
        self.service_limit = service_limit
        self._limiter_healthy = True

    async def check(self, req: Check, *, now: float | None = None) -> Verdict:
        """The verdict on ``req``. ``now`` (seconds since the epoch) is the request's time when
        a replay of recorded traffic runs through the gatekeeper: the rate limit and the risk
        decision then use it instead of the clocks. Live requests pass nothing."""
        try:
            refuse_token_in_url(req.query)
            identity = await self.verifier.verify(bearer_token(req.authorization))
        except JwtError as exc:
            headers = [(b"www-authenticate", exc.www_authenticate.encode())]
            if exc.status == 503:
                headers = [(b"retry-after", b"5")]
            return Verdict(False, exc.status, exc.detail, headers, slug=exc.code.replace("_", "-"))
        service = identity.service_id
        if usable_id(service) is None:  # it becomes the event's data.service_id
            detail = "the token's subject is not a usable service id (1-128 characters)"
            headers = [(b"www-authenticate", b'Bearer realm="riskguard", error="invalid_token"')]
            return Verdict(False, 401, detail, headers, slug="invalid-claim")
        if req.method not in _METHODS:
            return Verdict(
                False, 405, f"the gateway does not pass {req.method} requests", subject=service
            )

        limited = await self._rate_limited(service, req, now)
        if limited is not None:
            return limited

        risk = self.risk
        deployment = deployment_of(identity.claims, self.policy.deployment_claim)
        if risk is None:
            headers = [(SUBJECT, service.encode())]
            if deployment is not None:
                headers.append((DEPLOYMENT, deployment.encode()))
            return Verdict(True, headers=headers, subject=service)
        template, declared = req.catalog.template(req.method, req.path)
        call = ApiCall(
            service_id=service,
            target=req.target,
            method=req.method,
            path=template,
            declared=declared,
            catalogued=bool(req.catalog),
            sensitive=self.policy.sensitive.match(template),
            request_bytes=None if req.request_bytes is None else min(req.request_bytes, 2**53),
            ip=req.ip,
            deployment=deployment,
            user_agent=req.user_agent,
        )
        try:
            verdict = await risk.assess(call, now)
        except (DependencyUnavailable, NotFoundError):  # no tenant or ruleset to decide with yet
            detail = "the risk engine is not available yet; retry shortly"
            return Verdict(False, 503, detail, [(b"retry-after", b"1")], subject=service)
        outcome = verdict.outcome
        if outcome is Outcome.REVIEW:
            outcome = Outcome.parse(self.policy.review)
        decision = verdict.decision_id.encode()
        label = verdict.outcome.label
        if outcome is Outcome.ALLOW:
            headers = [
                (SUBJECT, service.encode()),
                (DECISION, decision),
                (OUTCOME, label.encode()),
            ]
            if deployment is not None:
                headers.append((DEPLOYMENT, deployment.encode()))
            return Verdict(
                True,
                headers=headers,
                decision_id=verdict.decision_id,
                outcome=label,
                subject=service,
            )
        denial = [(DECISION, decision), (OUTCOME, label.encode())]
        if outcome is Outcome.CHALLENGE:
            step_up = _STEP_UP.format(id=verdict.decision_id).encode()
            return Verdict(
                False,
                401,
                "step-up verification required: this call is unusual for the calling service",
                [(b"www-authenticate", step_up), *denial],
                verdict.decision_id,
                label,
                service,
                slug="step-up-required",
            )
        held = " (held for review)" if verdict.outcome is Outcome.REVIEW else ""
        return Verdict(
            False,
            403,
            f"the call was refused by the risk policy{held}",
            denial,
            verdict.decision_id,
            label,
            service,
        )

    async def _rate_limited(self, service: str, req: Check, now: float | None) -> Verdict | None:
        now_us = None if now is None else round(now * 1_000_000)
        checks = [(req.route_key, req.rate_limit)]
        if self.service_limit is not None:
            checks.append(("*", self.service_limit))
        for route, limit in checks:
            try:
                decision = await self.limiter.hit(service, route, limit, now_us=now_us)
            except DependencyUnavailable as exc:
                if self._limiter_healthy:
                    log.warning("rate_limiter_unavailable", error=str(exc))
                    self._limiter_healthy = False
                continue  # fail open: the limiter protects capacity, identity still holds
            if not self._limiter_healthy:
                log.info("rate_limiter_recovered")
                self._limiter_healthy = True
            if not decision.allowed:
                headers = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]
                scope = "this route" if route != "*" else "all routes"
                return Verdict(
                    False,
                    429,
                    f"rate limit of {service} on {scope} exceeded; retry after "
                    f"{decision.retry_after_s} s",
                    headers,
                    subject=service,
                )
        return None

"""The simulator's gateway scene replayed through the gateway's own decision path, and its
figures.

:func:`replay` builds the real gateway — :class:`~riskguard.adapters.gateway.proxy.Gateway`
with its route table, the targets' declared routes, the JWT verifier, the rate limiter, the
risk engine with its state store and the decision records — for the scene's configuration, and
hands every event to ``Gatekeeper.check`` as the request it stands for: a JWT of the calling
service (``sub``) carrying its deployment id (the ``deployment`` claim), the method, the path
under ``/<target>/``, the caller's address and user agent, with **the event's time** (the rate
limit and the risk decision use it instead of the clocks). Nothing of the decision is
re-implemented here; what a live request adds is the HTTP around it.

:func:`evaluate` measures the issue's two targets on the verdicts:

- **lateral movement** — per episode, the index of the first *refused* (403: ``block``, or
  ``review``, which the gateway refuses by default) call among the episode's calls of routes
  the service had never called before the episode (repeats of such a route count: each is a
  call the attacker made to a route outside the service's history). A challenge (401 step-up)
  is not counted as blocked. Target: every episode blocked within its first 5 never-seen calls.
- **normal service traffic** — the share of unlabelled calls whose outcome is ``allow``
  (forwarded). Everything else counts against it: challenges (401) included, also those of
  routes a new release started calling. Target: at least 99.9 %.

:class:`SigningKeys` makes the ES256 key, JWKS file and tokens the replay and the demo use.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from riskguard.adapters.gateway.config import GatewayConfig, parse_config
from riskguard.adapters.gateway.gatekeeper import Check, Gatekeeper
from riskguard.adapters.gateway.proxy import Gateway
from riskguard.adapters.gateway.ratelimit import MemoryRateLimiter
from riskguard.adapters.gateway.routes import check_path
from riskguard.adapters.gateway.settings import GatewaySettings, load_gateway_settings
from riskguard.settings import Settings, load_settings

ISSUER = "https://idp.riskguard.local"
AUDIENCE = "riskguard-gateway"
KID = "scene-es256"
TARGET_FIRST_BLOCK = 5  # every lateral movement blocked within its first 5 never-seen calls
TARGET_NORMAL_ALLOWED = 0.999  # of normal service calls
LEARNING_S = 86_400.0  # normal calls count from a day after the first event
Row = dict[str, Any]


class SigningKeys:
    """An ES256 signing key made now, its public JWKS in ``folder/jwks.json``, and the tokens
    of the calling services (one per service and deployment, valid for a day)."""

    def __init__(self, folder: Path) -> None:
        self.key = ECKey.generate_key("P-256", private=True)
        public = self.key.as_dict(private=False) | {"kid": KID, "use": "sig", "alg": "ES256"}
        folder.mkdir(parents=True, exist_ok=True)
        self.jwks_path = folder / "jwks.json"
        self.jwks_path.write_text(json.dumps({"keys": [public]}), encoding="utf-8")
        self._tokens: dict[tuple[str, str | None], str] = {}

    def token(self, subject: str, deployment: str | None = None) -> str:
        token = self._tokens.get((subject, deployment))
        if token is None:
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": subject,
                "iat": now,
                "exp": now + 86_400,
            }
            if deployment is not None:
                claims["deployment"] = deployment
            token = jwt.encode({"alg": "ES256", "kid": KID}, claims, self.key)
            self._tokens[(subject, deployment)] = token
        return token

    def authorization(self, subject: str, deployment: str | None = None) -> bytes:
        return b"Bearer " + self.token(subject, deployment).encode()

    def settings(self) -> GatewaySettings:
        """Gateway settings that trust exactly this key."""
        return load_gateway_settings(
            env="development",
            jwt_keys_file=self.jwks_path,
            jwt_issuer=ISSUER,
            jwt_audience=[AUDIENCE],
            jwt_algorithms=["ES256"],
        )


@dataclass(frozen=True, slots=True)
class CallVerdict:
    """What the gateway did with one call of the scene."""

    status: int  # 200: forwarded; 401 (step-up challenge), 403 (blocked or held), 429, ...
    outcome: str | None  # the risk decision's outcome (None: refused before it)
    decision_id: str | None
    template: str  # the route template the gateway decided on


def replay_settings(database_url: str) -> Settings:
    """The service settings of a replay: records in ``database_url``, state in memory, nothing
    after the decision (no outbox, dispatcher or audit log: they change no decision)."""
    return load_settings(
        env="development",
        database_url=database_url,
        redis_url=None,
        access_log=False,
        log_level="error",
        auto_migrate=True,
        outbox=False,
        dispatcher=False,
        audit=False,
        gc_tuning=False,
    )


def event_time(event: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00")).timestamp()


class SceneGateway:
    """The real gateway for a scene's configuration, driven call by call (see the module
    docstring) — and, once started, able to serve live requests too (``gateway.handle``).
    Use ``async with``."""

    def __init__(
        self,
        config: GatewayConfig | Mapping[str, Any],
        folder: Path,
        *,
        keys: SigningKeys | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.config = config if isinstance(config, GatewayConfig) else parse_config(config)
        self.keys = keys or SigningKeys(folder)
        database_url = f"sqlite+aiosqlite:///{(folder / 'gateway.db').resolve()}"
        self.gateway = Gateway(
            self.config,
            settings=settings or replay_settings(database_url),
            gateway_settings=self.keys.settings(),
        )
        self.gatekeeper: Gatekeeper | None = None

    async def __aenter__(self) -> SceneGateway:
        await self.gateway.startup()
        live = self.gateway.gatekeeper
        assert live is not None
        # the gateway's own checks and risk engine (same verifier, state and records), with a
        # rate limiter of its own: replayed times and the live monotonic clock never share keys
        self.gatekeeper = Gatekeeper(
            verifier=live.verifier,
            limiter=MemoryRateLimiter(),
            risk=live.risk,
            policy=live.policy,
            service_limit=live.service_limit,
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.gateway.shutdown()

    async def use_pack(self, document: Mapping[str, Any]) -> str:
        """Publish ``document`` (a rule pack) as the gateway tenant's ruleset; its version."""
        risk = self.gateway.risk
        assert risk is not None
        tenant = await risk.ready()
        rules = self.gateway.container.rules
        await rules.replace_draft(tenant, document, actor="scene-replay")
        version = await rules.publish(tenant, "scene-replay", "gateway scene replay")
        return version.version

    async def call(self, event: Mapping[str, Any], *, now: float | None = None) -> CallVerdict:
        """The gatekeeper's verdict on the request ``event`` stands for, at ``now`` (default:
        the event's time)."""
        assert self.gatekeeper is not None
        data, context = event["data"], event.get("context") or {}
        path = f"/{data['target']}{data['path']}"
        check_path(path, path.encode())
        match = self.gateway.table.match(path)
        if match is None:
            raise ValueError(f"no route of the scene's configuration serves {path}")
        route = self.gateway.routes[match.index]
        method = str(data["method"])
        check = Check(
            method=method,
            path=match.upstream_path,
            target=route.upstream,
            catalog=route.catalog,
            route_key=route.key,
            rate_limit=route.limit,
            authorization=[self.keys.authorization(data["service_id"], context.get("device_id"))],
            ip=context.get("ip"),
            user_agent=context.get("user_agent"),
            request_bytes=data.get("request_bytes"),
        )
        verdict = await self.gatekeeper.check(check, now=event_time(event) if now is None else now)
        template, _ = route.catalog.template(method, match.upstream_path)
        return CallVerdict(
            status=200 if verdict.allowed else verdict.status,
            outcome=verdict.outcome,
            decision_id=verdict.decision_id,
            template=template,
        )

    async def reasons(self, decision_ids: Iterable[str]) -> dict[str, list[str]]:
        """The reason codes recorded for these decisions (after every record is written)."""
        risk = self.gateway.risk
        assert risk is not None
        await risk.drain()
        tenant = await risk.ready()
        out = {}
        for decision_id in decision_ids:
            record = await self.gateway.container.store.get(tenant, decision_id)
            if record is not None:
                out[decision_id] = [str(r["code"]) for r in record.reasons]
        return out


@dataclass
class Replay:
    """Every call's verdict, in event order, and the reasons of the refused normal calls."""

    verdicts: list[CallVerdict]
    seconds: float
    ruleset: str
    reasons: dict[str, list[str]] = field(default_factory=dict)


async def replay(
    events: Sequence[Row],
    labels: Sequence[Row],
    config: Mapping[str, Any],
    folder: Path,
    *,
    pack: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """Replay ``events`` in order through a fresh gateway (records in ``folder``)."""
    labelled = {row["event_id"] for row in labels}
    verdicts: list[CallVerdict] = []
    async with SceneGateway(config, folder) as scene:
        assert scene.gateway.risk is not None
        ruleset = await scene.use_pack(pack) if pack is not None else ""
        if not ruleset:
            tenant = await scene.gateway.risk.ready()
            engine = await scene.gateway.container.engines.engine(tenant)
            ruleset = engine.ruleset.version
        started = time.perf_counter()
        for i, event in enumerate(events):
            verdicts.append(await scene.call(event))
            if i % 256 == 255:
                await asyncio.sleep(0)  # the write-behind records get their turn
                if progress is not None:
                    progress(i + 1)
        seconds = time.perf_counter() - started
        refused = [
            v.decision_id
            for v, e in zip(verdicts, events, strict=True)
            if v.decision_id is not None and v.outcome != "allow" and e["event_id"] not in labelled
        ]
        reasons = await scene.reasons(refused)
    return Replay(verdicts, seconds, ruleset, reasons)


# ---------------------------------------------------------------------------------------------
# The figures


def _status_name(verdict: CallVerdict) -> str:
    if verdict.status == 200:
        return "allowed" if verdict.outcome in (None, "allow") else f"forwarded_{verdict.outcome}"
    if verdict.status == 401 and verdict.outcome == "challenge":
        return "challenged"
    if verdict.status == 403:
        return "blocked" if verdict.outcome == "block" else "held_for_review"
    return f"http_{verdict.status}"


@dataclass
class SceneTally:
    """The counts behind the scene's figures; tallies of several streams add up (``+=``)."""

    episodes: list[dict[str, Any]] = field(default_factory=list)
    normal: Counter[str] = field(default_factory=Counter)  # after the learning day
    learning: Counter[str] = field(default_factory=Counter)  # normal calls of the learning day
    release_routes: Counter[str] = field(default_factory=Counter)  # routes releases added
    reasons: Counter[str] = field(default_factory=Counter)  # of refused normal calls
    calls: int = 0
    seconds: float = 0.0
    rulesets: list[str] = field(default_factory=list)

    def __iadd__(self, other: SceneTally) -> SceneTally:
        self.episodes += other.episodes
        self.normal += other.normal
        self.learning += other.learning
        self.release_routes += other.release_routes
        self.reasons += other.reasons
        self.calls += other.calls
        self.seconds += other.seconds
        self.rulesets += [r for r in other.rulesets if r not in self.rulesets]
        return self

    def summary(self) -> dict[str, Any]:
        """The figures, and whether the targets are met."""
        first = Counter(
            "never" if e["first_blocked"] is None else e["first_blocked"] for e in self.episodes
        )
        within = sum(
            1
            for e in self.episodes
            if e["first_blocked"] is not None and e["first_blocked"] <= TARGET_FIRST_BLOCK
        )
        total = sum(self.normal.values())
        share = self.normal["allowed"] / total if total else 0.0
        learning_total = sum(self.learning.values())
        release_total = sum(self.release_routes.values())
        return {
            "episodes": len(self.episodes),
            "episodes_blocked_within_5": within,
            "first_blocked_call": {
                str(k): first[k]
                for k in sorted(first, key=lambda k: (k == "never", k if k != "never" else 0))
            },
            "normal_calls": total,
            "normal_allowed": self.normal["allowed"],
            "normal_allowed_share": round(share, 6),
            "normal_outcomes": dict(self.normal),
            "normal_refusal_reasons": dict(self.reasons.most_common(10)),
            "release_route_calls": release_total,
            "release_route_allowed_share": round(
                self.release_routes["allowed"] / release_total if release_total else 0.0, 6
            ),
            "release_route_outcomes": dict(self.release_routes),
            "learning_day_calls": learning_total,
            "learning_day_allowed_share": round(
                self.learning["allowed"] / learning_total if learning_total else 0.0, 6
            ),
            "learning_day_outcomes": dict(self.learning),
            "calls_replayed": self.calls,
            "replay_seconds": round(self.seconds, 2),
            "calls_per_second": round(self.calls / self.seconds, 1) if self.seconds else None,
            "rulesets": self.rulesets,
            "targets": {
                "lateral_movement_blocked_within_5": bool(self.episodes)
                and within == len(self.episodes),
                "normal_allowed_at_least_99_9": total > 0 and share >= TARGET_NORMAL_ALLOWED,
            },
        }


def evaluate(
    events: Sequence[Row],
    labels: Sequence[Row],
    result: Replay,
    *,
    learning_s: float = LEARNING_S,
) -> SceneTally:
    """Tally one replay (module docstring): per lateral-movement episode the never-seen call
    first blocked; what happened to normal calls once the gateway has known the services for
    ``learning_s`` (a day: the pack's own notion of an established service), and apart from
    them, the normal calls of that learning day."""
    label_of = {row["event_id"]: row for row in labels}
    learned_at = event_time(events[0]) + learning_s if events else 0.0
    seen: dict[str, set[tuple[str, str, str]]] = {}
    first_deployment: dict[str, str | None] = {}
    route_by_release: dict[tuple[str, str, str, str], bool] = {}  # route -> added by a release
    episodes: dict[str, dict[str, Any]] = {}
    tally = SceneTally(calls=len(events), seconds=result.seconds, rulesets=[result.ruleset])
    for event, verdict in zip(events, result.verdicts, strict=True):
        data = event["data"]
        service = str(data["service_id"])
        deployment = (event.get("context") or {}).get("device_id")
        key = (str(data["target"]), str(data["method"]), verdict.template)
        known = seen.setdefault(service, set())
        label = label_of.get(event["event_id"])
        outcome = _status_name(verdict)
        if label is None:
            first_deployment.setdefault(service, deployment)
            route = (service, *key)
            if route not in route_by_release:
                route_by_release[route] = deployment != first_deployment[service]
            if event_time(event) < learned_at:
                tally.learning[outcome] += 1
            else:
                tally.normal[outcome] += 1
                if route_by_release[route]:
                    tally.release_routes[outcome] += 1
                if outcome != "allowed" and verdict.decision_id in result.reasons:
                    tally.reasons.update(result.reasons[verdict.decision_id][:2])
        else:
            episode = episodes.get(label["episode"])
            if episode is None:
                episode = episodes[label["episode"]] = {
                    "episode": label["episode"],
                    "service": service,
                    "started": event["occurred_at"],
                    "calls": 0,
                    "never_seen": 0,
                    "first_blocked": None,  # index among the never-seen calls, from 1
                    "first_refused": None,  # the same for any refusal (a 401 challenge too)
                    "allowed_after_block": 0,
                    "outcomes": Counter(),
                    "before": frozenset(known),
                }
            episode["calls"] += 1
            episode["outcomes"][outcome] += 1
            if key not in episode["before"]:
                episode["never_seen"] += 1
                if verdict.status == 403 and episode["first_blocked"] is None:
                    episode["first_blocked"] = episode["never_seen"]
                if verdict.status != 200 and episode["first_refused"] is None:
                    episode["first_refused"] = episode["never_seen"]
                if verdict.status == 200 and episode["first_blocked"] is not None:
                    episode["allowed_after_block"] += 1
        known.add(key)
    for episode in sorted(episodes.values(), key=lambda e: str(e["started"])):
        del episode["before"]
        episode["outcomes"] = dict(episode["outcomes"])
        tally.episodes.append(episode)
    return tally

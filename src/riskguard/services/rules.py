"""Rules over the API: a per-tenant draft edited rule by rule, published as immutable versions.

Every tenant has one *draft* pack (features, lists, thresholds, fusion weights and rules) and a
history of *published* versions, each named by its content hash; exactly one is active and every
decision records it. Editing a rule changes the draft only; ``publish`` freezes the draft as a
new version and activates it. Every replica polls the active versions (one cheap query a
second) and swaps the compiled engine in without a restart; a version is compiled once per
process and shared by tenants with identical packs.

Every write validates the whole resulting pack (a rule that does not compile against the pack's
features is refused with its issues) and is applied with optimistic concurrency on the draft's
revision, retried when two edits race.

The same poller picks up each tenant's active *model* (when a model source is wired: the
registry of ``RISKGUARD_MODEL_DIR``, see ``adapters.ml.live``): loading runs in a worker
thread, and a tenant's engine is rebuilt as ``Engine(ruleset, model)`` when either changed.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from riskguard.engine.decide import Engine
from riskguard.engine.models import Model
from riskguard.engine.rules import (
    PackIssue,
    RulePackError,
    Ruleset,
    RuleSpec,
    load_ruleset,
    pack_version,
    parse_pack_text,
)
from riskguard.ports import DecisionStore, Draft, RulesetVersion
from riskguard.rulefile import default_pack_text

log = structlog.get_logger("riskguard.rules")

PATCHABLE = ("enabled", "score", "mode", "outcome")
_RETRIES = 8


class NotFoundError(LookupError):
    """No such rule / version for this tenant (404)."""


class ConflictError(Exception):
    """The operation conflicts with the current state (409)."""


def default_document() -> dict[str, Any]:
    """The built-in pack as a document (new tenants start from it)."""
    return parse_pack_text(default_pack_text(), source="default.yaml")


def rule_document(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A rule validated alone (shape, id, reason code) in its canonical form; RulePackError."""
    from pydantic import ValidationError

    try:
        spec = RuleSpec.model_validate(rule)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            issues.append(PackIssue(f"rule.{loc}" if loc else "rule", msg))
        raise RulePackError(issues) from None
    return spec.model_dump(mode="json", exclude_defaults=True) | {
        "id": spec.id,
        "description": spec.description,
        "events": list(spec.events),
        "when": spec.when,
        "reason": spec.reason,
    }


class ModelSource(Protocol):
    """Each tenant's active model (``adapters.ml.live.TenantModels``)."""

    def refresh(self, tenant_ids: Iterable[str]) -> Mapping[str, Model | None]:
        """Check for changes and load them (blocking: the cache runs it in a thread); the
        model each tenant is to be served now. Never raises for one tenant's bad model."""
        ...


class EngineCache:
    """The compiled engine of every tenant's active version (and active model, when a model
    source is given), refreshed by polling the store and the model registry."""

    def __init__(
        self, store: DecisionStore, *, max_versions: int = 64, models: ModelSource | None = None
    ) -> None:
        self._store = store
        self._active: dict[str, Engine] = {}
        self._compiled: dict[str, Engine] = {}  # version -> engine (same pack, same engine)
        self._max_versions = max_versions
        self._lock = asyncio.Lock()
        self._models = models
        self._model_of: dict[str, Model | None] = {}  # tenant -> model, from the last poll
        self.on_swap: Callable[[str, str], None] | None = None

    def get(self, tenant_id: str) -> Engine | None:
        """The tenant's active engine if loaded (the hot path: one dict lookup)."""
        return self._active.get(tenant_id)

    async def engine(self, tenant_id: str) -> Engine:
        """The tenant's active engine, loading it if this process has not yet."""
        engine = self._active.get(tenant_id)
        if engine is not None:
            return engine
        await self.refresh()
        engine = self._active.get(tenant_id)
        if engine is None:
            raise NotFoundError("this tenant has no published ruleset")
        return engine

    async def compile(self, tenant_id: str, version: str) -> Engine:
        engine = self._compiled.get(version)
        if engine is not None:
            return engine
        stored = await self._store.get_version(tenant_id, version)
        if stored is None:
            raise NotFoundError(f"ruleset version {version} not found")
        ruleset: Ruleset = await asyncio.to_thread(load_ruleset, stored.document)
        engine = Engine(ruleset)
        if len(self._compiled) >= self._max_versions:
            in_use = {e.ruleset.version for e in self._active.values()}
            for old in [v for v in self._compiled if v not in in_use]:
                del self._compiled[old]
        self._compiled[version] = engine
        return engine

    def activate(self, tenant_id: str, engine: Engine) -> None:
        """Serve ``engine``'s ruleset to the tenant, with the tenant's current model."""
        model = self._model_of.get(tenant_id)
        if engine.model is not model:
            engine = Engine(engine.ruleset, model)
        previous = self._active.get(tenant_id)
        self._active[tenant_id] = engine
        if previous is None or previous.ruleset.version != engine.ruleset.version:
            log.info("ruleset_active", tenant=tenant_id, version=engine.ruleset.version)
            if self.on_swap is not None:
                self.on_swap(tenant_id, engine.ruleset.version)
        if model is not None and (previous is None or previous.model is not model):
            _warn_unfed_inputs(tenant_id, engine.ruleset, model)

    async def refresh(self) -> int:
        """Load every tenant's active version (and model) that changed; returns how many
        engines were swapped."""
        async with self._lock:
            active = await self._store.active_versions()
            if self._models is not None:
                try:
                    models = await asyncio.to_thread(self._models.refresh, list(active))
                except Exception as exc:  # keep the models we have
                    log.error("model_poll_failed", error_type=type(exc).__name__)
                else:
                    self._model_of = dict(models)
            swapped = 0
            for tenant_id, version in active.items():
                current = self._active.get(tenant_id)
                if current is not None and current.ruleset.version == version:
                    if current.model is self._model_of.get(tenant_id):
                        continue
                    self.activate(tenant_id, current)  # the same ruleset, another model
                    swapped += 1
                    continue
                try:
                    engine = await self.compile(tenant_id, version)
                except (RulePackError, NotFoundError) as exc:  # never replace a working engine
                    log.error(
                        "ruleset_load_failed", tenant=tenant_id, version=version, error=str(exc)
                    )
                    continue
                self.activate(tenant_id, engine)
                swapped += 1
            return swapped

    async def poll(self, interval_s: float) -> None:
        """Refresh forever (a background task); errors are logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # the database may be down: keep the engines we have
                log.warning("ruleset_poll_failed", error=type(exc).__name__)


def _warn_unfed_inputs(tenant_id: str, ruleset: Ruleset, model: Model) -> None:
    """Log the feature paths a model reads that the tenant's pack does not compute (the model
    reads them as missing: it was trained on another pack)."""
    known = ruleset.features.schema()
    missing = sorted(p for p in model.features if p.startswith("features.") and p not in known)
    if missing:
        log.warning(
            "model_inputs_not_computed",
            tenant=tenant_id,
            model_version=model.version,
            ruleset_version=ruleset.version,
            missing=missing[:10],
            count=len(missing),
        )


class RulesService:
    """Create, change, delete (softly), validate and publish a tenant's rules."""

    def __init__(self, store: DecisionStore, engines: EngineCache) -> None:
        self._store = store
        self._engines = engines
        # (tenant, actor, action, body) -> appended to the audit log; set by the wiring
        self.audit: Callable[[str, str, str, Mapping[str, Any]], Awaitable[None]] | None = None

    # -- reading -------------------------------------------------------------------------

    async def draft(self, tenant_id: str) -> Draft:
        draft = await self._store.get_draft(tenant_id)
        if draft is None:
            await self.bootstrap(tenant_id)
            draft = await self._store.get_draft(tenant_id)
            assert draft is not None
        return draft

    async def active_version(self, tenant_id: str) -> str | None:
        engine = self._engines.get(tenant_id)
        if engine is not None:
            return engine.ruleset.version
        versions = await self._store.list_versions(tenant_id)
        return next((v.version for v in versions if v.active), None)

    async def list_rules(self, tenant_id: str, *, include_deleted: bool = False) -> dict[str, Any]:
        draft = await self.draft(tenant_id)
        rules = [dict(r, deleted=False) for r in draft.document.get("rules", [])]
        if include_deleted:
            rules += [dict(r, deleted=True) for r in draft.deleted_rules.values()]
        active = await self.active_version(tenant_id)
        return {
            "draft_version": pack_version(draft.document),
            "active_version": active,
            "unpublished_changes": pack_version(draft.document) != active,
            "revision": draft.revision,
            "rules": rules,
        }

    async def get_rule(self, tenant_id: str, rule_id: str) -> dict[str, Any]:
        draft = await self.draft(tenant_id)
        for rule in draft.document.get("rules", []):
            if rule.get("id") == rule_id:
                return dict(rule, deleted=False)
        if rule_id in draft.deleted_rules:
            return dict(draft.deleted_rules[rule_id], deleted=True)
        raise NotFoundError(f"rule {rule_id} not found")

    # -- writing -------------------------------------------------------------------------

    async def _audited(
        self, tenant_id: str, actor: str, action: str, body: Mapping[str, Any]
    ) -> None:
        """Record a change in the audit log (when one is wired). The change has happened
        already: a log that cannot take the record is reported loudly, not undone."""
        if self.audit is None:
            return
        try:
            await self.audit(tenant_id, actor, action, body)
        except Exception as exc:
            log.error("audit_append_failed", action=action, error_type=type(exc).__name__)

    async def create_rule(
        self, tenant_id: str, rule: Mapping[str, Any], *, actor: str = "system"
    ) -> dict[str, Any]:
        body = rule_document(rule)

        def change(draft: Draft) -> None:
            if any(r.get("id") == body["id"] for r in draft.document.get("rules", [])):
                raise ConflictError(f"rule {body['id']} already exists")
            draft.deleted_rules.pop(body["id"], None)
            draft.document.setdefault("rules", []).append(body)

        await self._edit(tenant_id, change)
        await self._audited(tenant_id, actor, "rule.created", {"rule": body})
        return dict(body, deleted=False)

    async def replace_rule(
        self, tenant_id: str, rule_id: str, rule: Mapping[str, Any], *, actor: str = "system"
    ) -> dict[str, Any]:
        rule = dict(rule)
        if rule.setdefault("id", rule_id) != rule_id:
            raise ConflictError("the rule id in the body differs from the one in the path")
        body = rule_document(rule)

        def change(draft: Draft) -> None:
            _replace(draft, rule_id, lambda _old: body)

        await self._edit(tenant_id, change)
        await self._audited(tenant_id, actor, "rule.replaced", {"rule": body})
        return dict(body, deleted=False)

    async def patch_rule(
        self, tenant_id: str, rule_id: str, patch: Mapping[str, Any], *, actor: str = "system"
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def change(draft: Draft) -> None:
            def apply(old: dict[str, Any]) -> dict[str, Any]:
                merged = {**old, **patch}
                for key, value in patch.items():
                    if value is None:
                        merged.pop(key, None)
                body = rule_document(merged)
                result.update(body)
                return body

            _replace(draft, rule_id, apply)

        await self._edit(tenant_id, change)
        await self._audited(
            tenant_id, actor, "rule.patched", {"rule_id": rule_id, "patch": dict(patch)}
        )
        return dict(result, deleted=False)

    async def delete_rule(self, tenant_id: str, rule_id: str, *, actor: str = "system") -> None:
        def change(draft: Draft) -> None:
            rules = draft.document.get("rules", [])
            for i, rule in enumerate(rules):
                if rule.get("id") == rule_id:
                    draft.deleted_rules[rule_id] = rules.pop(i)
                    return
            raise NotFoundError(f"rule {rule_id} not found")

        await self._edit(tenant_id, change)
        await self._audited(tenant_id, actor, "rule.deleted", {"rule_id": rule_id})

    async def replace_draft(
        self, tenant_id: str, document: Mapping[str, Any], *, actor: str = "system"
    ) -> Draft:
        """Replace the whole draft pack (features, lists, thresholds and rules)."""
        validate_document(document)

        def change(draft: Draft) -> None:
            draft.document = copy.deepcopy(dict(document))

        draft = await self._edit(tenant_id, change)
        await self._audited(
            tenant_id, actor, "draft.replaced", {"revision": draft.revision, "pack": document}
        )
        return draft

    async def _edit(self, tenant_id: str, change: Callable[[Draft], None]) -> Draft:
        for _ in range(_RETRIES):
            draft = await self.draft(tenant_id)
            draft.document = copy.deepcopy(draft.document)
            draft.deleted_rules = copy.deepcopy(draft.deleted_rules)
            change(draft)
            validate_document(draft.document)
            if await self._store.save_draft(draft):
                draft.revision += 1
                return draft
        raise ConflictError("the draft kept changing under this edit; retry")

    # -- versions ------------------------------------------------------------------------

    async def bootstrap(self, tenant_id: str) -> RulesetVersion:
        """Give a new tenant the default pack as its draft and its first active version."""
        document = default_document()
        await self._store.save_draft(Draft(tenant_id=tenant_id, document=document, revision=0))
        existing = await self._store.list_versions(tenant_id)
        if existing:
            return next((v for v in existing if v.active), existing[0])
        return await self._publish(tenant_id, document, "system", "initial default pack")

    async def publish(self, tenant_id: str, actor: str, comment: str = "") -> RulesetVersion:
        draft = await self.draft(tenant_id)
        validate_document(draft.document)
        return await self._publish(tenant_id, draft.document, actor, comment)

    async def _publish(
        self, tenant_id: str, document: Mapping[str, Any], actor: str, comment: str
    ) -> RulesetVersion:
        version = RulesetVersion(
            tenant_id=tenant_id,
            version=pack_version(document),
            document=document,
            created_at=datetime.now(UTC),
            created_by=actor,
            comment=comment[:500],
            active=True,
        )
        engine = await self._engines_compile(document)
        await self._store.publish(version)
        self._engines.activate(tenant_id, engine)
        log.info("ruleset_published", tenant=tenant_id, version=version.version, actor=actor)
        await self._audited(
            tenant_id, actor, "ruleset.published", {"version": version.version, "comment": comment}
        )
        return version

    async def _engines_compile(self, document: Mapping[str, Any]) -> Engine:
        ruleset = await asyncio.to_thread(load_ruleset, document)
        return Engine(ruleset)

    async def activate(self, tenant_id: str, version: str, actor: str) -> RulesetVersion:
        """Make an earlier published version active again (a rollback)."""
        stored = await self._store.get_version(tenant_id, version)
        if stored is None:
            raise NotFoundError(f"ruleset version {version} not found")
        engine = await self._engines.compile(tenant_id, version)
        await self._store.publish(stored)
        self._engines.activate(tenant_id, engine)
        log.info("ruleset_activated", tenant=tenant_id, version=version, actor=actor)
        await self._audited(tenant_id, actor, "ruleset.activated", {"version": version})
        return await self._store.get_version(tenant_id, version) or stored

    async def versions(self, tenant_id: str) -> list[RulesetVersion]:
        await self.draft(tenant_id)  # a tenant always has its first version
        return await self._store.list_versions(tenant_id)

    async def version(self, tenant_id: str, version: str) -> RulesetVersion:
        stored = await self._store.get_version(tenant_id, version)
        if stored is None:
            raise NotFoundError(f"ruleset version {version} not found")
        return stored


def validate_document(document: Mapping[str, Any]) -> Ruleset:
    """Compile a pack document; RulePackError lists every issue."""
    from riskguard.engine.rules import _json_problem

    problem = _json_problem(document)
    if problem is not None:
        raise RulePackError([PackIssue("pack", problem)])
    return load_ruleset(document)


def _replace(draft: Draft, rule_id: str, make: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    rules = draft.document.get("rules", [])
    for i, rule in enumerate(rules):
        if rule.get("id") == rule_id:
            rules[i] = make(rule)
            return
    raise NotFoundError(f"rule {rule_id} not found")

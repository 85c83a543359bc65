"""The ``riskguard`` command line: serve, gateway, worker, score, simulate, demo, and the groups
rules, tenants, keys, db, audit and model (``riskguard --help`` lists them).

Exit codes: 0 success; 1 the command ran but found problems (rejected lines, lint issues);
2 the command could not run (bad arguments, unreadable files, an invalid pack).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from riskguard.adapters.audit.cli import audit_app
from riskguard.adapters.gateway.command import gateway
from riskguard.adapters.ml.cli import model_app
from riskguard.engine.decide import Decision, Engine
from riskguard.engine.events import InvalidEventError, parse_event
from riskguard.engine.rules import RulePackError, Ruleset, load_ruleset_text
from riskguard.engine.state import InMemoryStateStore
from riskguard.rulefile import load_pack_file
from riskguard.scoring import Scorer
from riskguard.worker import worker

app = typer.Typer(
    name="riskguard",
    help="Real-time, explainable risk decisions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
rules_app = typer.Typer(help="Rule packs.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
tenants_app = typer.Typer(help="Tenants (each with its own decisions, rules and state).")
app.add_typer(tenants_app, name="tenants")
keys_app = typer.Typer(help="API keys (printed once, stored hashed).")
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The database schema.")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(model_app, name="model")
app.command()(gateway)
app.command()(worker)

EXIT_PROBLEMS = 1
EXIT_UNUSABLE = 2


def _fail(message: str, code: int = EXIT_UNUSABLE) -> typer.Exit:
    typer.echo(f"riskguard: {message}", err=True)
    return typer.Exit(code)


def _load_pack(path: Path | None) -> Ruleset:
    try:
        return load_pack_file(path)
    except RulePackError as exc:
        raise _fail(f"invalid rule pack {path or 'default'}:\n{exc}") from None


def decision_record(decision: Decision) -> dict[str, Any]:
    """The line ``riskguard score`` writes for one decision."""
    return decision.to_dict()


@app.command()
def score(
    events: Annotated[Path, typer.Argument(help="Events, one JSON object a line, in time order.")],
    rules: Annotated[Path | None, typer.Option(help="Rule pack (default: built-in).")] = None,
    out: Annotated[Path | None, typer.Option(help="Decisions file (default: stdout).")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad line.")] = False,
) -> None:
    """Score events from a JSONL file and write one decision a line, in the same order."""
    ruleset = _load_pack(rules)
    scorer = Scorer(Engine(ruleset), InMemoryStateStore())
    if out is not None and out.exists() and events.exists() and out.samefile(events):
        raise _fail(f"--out {out} is the events file itself; refusing to overwrite it")
    try:
        source = events.open("rb")  # bytes: a bad byte sequence rejects its line, not the run
    except OSError as exc:
        raise _fail(f"cannot read {events}: {exc.strerror}") from None
    try:
        sink: TextIO = out.open("w", encoding="utf-8") if out is not None else sys.stdout
    except OSError as exc:
        source.close()
        raise _fail(f"cannot write {out}: {exc.strerror}") from None
    rejected = scored = 0
    try:
        for number, raw in enumerate(source, start=1):
            problem = _score_line(scorer, raw, number == 1, sink)
            if problem is None:
                scored += 1
                continue
            if problem == "":
                continue
            rejected += 1
            typer.echo(f"{events}:{number}: rejected: {problem}", err=True)
            if strict:
                raise _fail(f"stopped at line {number} (--strict)", EXIT_PROBLEMS)
    except OSError as exc:
        raise _fail(f"cannot read {events}: {exc.strerror}") from None
    finally:
        source.close()
        if out is not None:
            sink.close()
    typer.echo(f"scored {scored} events, rejected {rejected}", err=True)
    if rejected:
        raise typer.Exit(EXIT_PROBLEMS)


def _score_line(scorer: Scorer, raw: bytes, first: bool, sink: TextIO) -> str | None:
    """Score one input line; None when scored, "" when blank, else what is wrong with it."""
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if not line.strip():
        return ""
    try:
        document = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc})"
    except (RecursionError, ValueError) as exc:  # absurd nesting, integers beyond 4,300 digits
        return f"not acceptable JSON ({type(exc).__name__})"
    try:
        event = parse_event(document)
    except InvalidEventError as exc:
        return str(exc)
    sink.write(json.dumps(decision_record(scorer.score(event))) + "\n")
    return None


@rules_app.command("lint")
def rules_lint(
    pack: Annotated[Path, typer.Argument(help="Rule pack to validate (YAML or JSON).")],
) -> None:
    """Validate a rule pack: every problem with its rule id, position and what was expected."""
    try:
        text = pack.read_text("utf-8")
    except OSError as exc:
        raise _fail(f"cannot read {pack}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise _fail(f"{pack} is not UTF-8 text") from None
    try:
        ruleset = load_ruleset_text(text, source=pack.name)
    except RulePackError as exc:
        for issue in exc.issues:
            typer.echo(f"{pack}: {issue}", err=True)
        raise typer.Exit(EXIT_PROBLEMS) from None
    active = sum(1 for r in ruleset.rules if not r.shadow)
    typer.echo(
        f"{pack}: ok — {len(ruleset.rules)} rules ({active} active, "
        f"{len(ruleset.rules) - active} shadow), {len(ruleset.features.features)} features, "
        f"version {ruleset.version}"
    )


class Scene(StrEnum):
    default = "default"
    gateway = "gateway"


class DemoScene(StrEnum):
    both = "both"
    decisions = "decisions"
    gateway = "gateway"


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Events file to write (JSONL).")],
    days: Annotated[int, typer.Option(min=1, max=365)] = 7,
    users: Annotated[int, typer.Option(min=10, max=1_000_000)] = 1000,
    seed: Annotated[int, typer.Option()] = 1,
    scene: Annotated[
        Scene,
        typer.Option(
            help="default: payments, logins, sessions and service calls with sixteen attack "
            "types; gateway: internal services behind the gateway, releases and lateral "
            "movement (--users is not used; the gateway configuration is written beside)."
        ),
    ] = Scene.default,
    services: Annotated[
        int | None,
        typer.Option(min=3, max=1000, help="Internal services (default: 12, or users/100)."),
    ] = None,
) -> None:
    """Write a labelled synthetic stream: benign behaviour and attacks (labels beside it)."""
    from riskguard.simulate import (
        gateway_config_path_for,
        labels_path_for,
        simulate_gateway,
        write_jsonl,
    )
    from riskguard.simulate import simulate as generate

    labels_path = labels_path_for(out)
    config_path = None
    if scene is Scene.gateway:
        made = simulate_gateway(days=days, seed=seed, services=services or 12)
        events, labels = made.events, made.labels
        config_path = gateway_config_path_for(out)
    else:
        events, labels = generate(days=days, users=users, seed=seed, services=services)
    try:
        write_jsonl(out, events)
        write_jsonl(labels_path, labels)
        if config_path is not None:
            config_path.write_text(json.dumps(made.gateway_config(), indent=2) + "\n", "utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {exc.filename}: {exc.strerror}") from None
    typer.echo(f"wrote {len(events)} events to {out} and {len(labels)} labels to {labels_path}")
    if config_path is not None:
        typer.echo(f"wrote the scene's gateway configuration to {config_path}")


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(min=1, max=3600, help="How long to run.")] = 20,
    users: Annotated[int, typer.Option(min=10, max=100_000)] = 500,
    days: Annotated[int, typer.Option(min=3, max=60)] = 5,
    seed: Annotated[int, typer.Option()] = 7,
    rules: Annotated[
        Path | None, typer.Option(help="Rule pack to publish and watch: saved edits apply live.")
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the service.")] = 8000,
    scene: Annotated[
        DemoScene,
        typer.Option(
            help="both: the decision service, then internal services behind the gateway; "
            "decisions or gateway: one of them."
        ),
    ] = DemoScene.both,
    gateway_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port of the gateway (default: the service's + 1)."),
    ] = None,
) -> None:
    """Start the service on the embedded default, feed it simulated traffic, show it live; then
    internal services behind the gateway, one compromised and blocked live."""
    from riskguard.demo import run_demo

    if rules is not None:
        _load_pack(rules)  # a pack that does not load is an error before the demo starts
    try:
        run_demo(
            seconds=seconds,
            users=users,
            days=days,
            seed=seed,
            rules=rules,
            port=port,
            scene=scene.value,
            gateway_port=gateway_port,
        )
    except (RuntimeError, OSError) as exc:
        raise _fail(str(exc)) from None


def _settings() -> Any:
    from riskguard.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise _fail(f"invalid settings: {exc}") from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help="Processes.")] = None,
) -> None:
    """Run the HTTP service (configured by RISKGUARD_* environment variables)."""
    import os

    import uvicorn

    settings = _settings()
    workers = workers or settings.workers
    if workers > 1 and settings.redis_url is None:
        raise _fail("several workers need shared state: set RISKGUARD_REDIS_URL")
    if workers > 1 and settings.database_url.startswith("sqlite"):
        typer.echo("riskguard: note: several workers share one SQLite file", err=True)
    if settings.audit:
        from riskguard.adapters.audit.keys import AuditKeyError, AuditSettings, load_signer

        try:
            load_signer(AuditSettings())  # in development, makes the key once, here
        except AuditKeyError as exc:
            raise _fail(f"audit log: {exc}") from None
    if settings.auto_migrate:
        from riskguard.adapters.sql.migrate import upgrade

        try:
            upgrade(settings.database_url)
        except Exception as exc:
            raise _fail(f"cannot migrate the database: {type(exc).__name__}") from None
        os.environ["RISKGUARD_AUTO_MIGRATE"] = "false"  # done once here, not per worker
    uvicorn.run(
        "riskguard.wiring:app_from_env",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        lifespan="on",
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to RISKGUARD_DATABASE_URL (or the embedded SQLite file)."""
    from riskguard.adapters.sql.migrate import upgrade
    from riskguard.adapters.sql.urls import redact

    settings = _settings()
    try:
        revision = upgrade(settings.database_url)
    except Exception as exc:
        raise _fail(
            f"cannot migrate {redact(settings.database_url)}: {type(exc).__name__}"
        ) from None
    typer.echo(f"database {redact(settings.database_url)} is at revision {revision}")


def _run_with_store(work: Any) -> Any:
    import asyncio

    from riskguard.adapters.sql.migrate import upgrade
    from riskguard.adapters.sql.store import SqlDecisionStore
    from riskguard.ports import DependencyUnavailable
    from riskguard.wiring import configure_logging

    settings = _settings()
    # Commands print their result on stdout; the service's log lines go to stderr, warnings up.
    configure_logging(settings.model_copy(update={"log_level": "warning"}), stream=sys.stderr)

    async def run() -> Any:
        store = SqlDecisionStore(settings.database_url)
        await store.start()
        try:
            return await work(store, settings)
        finally:
            await store.close()

    try:
        if settings.auto_migrate:
            upgrade(settings.database_url)
        return asyncio.run(run())
    except DependencyUnavailable as exc:
        raise _fail(f"the database is unavailable: {exc}") from None


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="A unique name.")],
) -> None:
    """Create a tenant with the default rule pack as its first published ruleset."""
    from riskguard.services.auth import create_tenant
    from riskguard.services.rules import EngineCache, RulesService

    async def work(store: Any, settings: Any) -> Any:
        tenant = await create_tenant(store, name)
        version = await RulesService(store, EngineCache(store)).bootstrap(tenant.id)
        await _audit(
            settings, tenant.id, "tenant.created", {"name": name, "ruleset": version.version}
        )
        return tenant, version

    try:
        tenant, version = _run_with_store(work)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"tenant {tenant.id} ({tenant.name}) created, ruleset {version.version} active")


async def _audit(settings: Any, tenant_id: str, action: str, body: dict[str, Any]) -> None:
    """Append an administrative change to the audit log (when it is on)."""
    from riskguard.adapters.audit.keys import AuditKeyError
    from riskguard.wiring import build_audit

    try:
        audit = build_audit(settings)
    except AuditKeyError as exc:
        raise _fail(f"audit log: {exc}") from None
    if audit is None:
        return
    await audit.start()
    try:
        await audit.append_one(action=action, actor="cli", body=body, tenant_id=tenant_id)
    finally:
        await audit.close()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant id or name.")],
    role: Annotated[str, typer.Option(help="ingest | admin | read | analyst")],
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from riskguard.ports import ROLES
    from riskguard.services.auth import new_key

    if role not in ROLES:
        raise _fail(f"--role must be one of {', '.join(ROLES)}")

    async def work(store: Any, settings: Any) -> Any:
        found = await store.find_tenant(tenant)
        if found is None:
            raise _fail(f"no tenant {tenant!r}")
        row, plaintext = new_key(found.id, role, settings.secret)
        await store.create_key(row)
        await _audit(settings, found.id, "key.created", {"key_id": row.key_id, "role": role})
        return found, row, plaintext

    found, row, plaintext = _run_with_store(work)
    typer.echo(
        f"key {row.key_id} ({role}) for tenant {found.id} ({found.name}) — shown once:", err=True
    )
    typer.echo(plaintext)


def main() -> None:
    """Console entry point."""
    app()

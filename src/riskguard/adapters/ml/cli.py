"""``riskguard model``: train, evaluate, list, activate, rollback.

Exit codes as the rest of the CLI: 0 success; 2 the command could not run (bad arguments,
unreadable data, a refused artifact). Libraries (numpy, scikit-learn, LightGBM, river,
matplotlib) are imported inside the commands, so ``riskguard`` itself starts fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

model_app = typer.Typer(
    help="Models: train on real fraud data or riskguard's own decisions, evaluate, activate.",
    no_args_is_help=True,
)

EXIT_UNUSABLE = 2
_KINDS = ("isolation_forest", "gbm", "online")
_DATASETS = ("creditcard", "fdh", "events")

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="Registry directory (default: $RISKGUARD_MODEL_DIR or ./models)."),
]
TenantOption = Annotated[
    str | None,
    typer.Option(help="Tenant scope (default: the deployment-wide 'default' scope)."),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"riskguard: {message}", err=True)
    return typer.Exit(EXIT_UNUSABLE)


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _errors() -> tuple[type[Exception], ...]:
    from riskguard.adapters.ml.artifact import ArtifactError
    from riskguard.adapters.ml.datasets import DatasetError
    from riskguard.adapters.ml.inputs import InputError
    from riskguard.adapters.ml.registry import RegistryError
    from riskguard.adapters.ml.training import TrainingError

    return (ArtifactError, DatasetError, InputError, RegistryError, TrainingError, OSError)


def _message(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")
    return str(exc)


def _load_frame(
    dataset: str,
    data: str,
    *,
    start: float | None,
    end: float | None,
    tenant: str | None,
    event_type: str,
    unlabelled: str,
    manifest: Any = None,
) -> Any:
    from riskguard.adapters.ml.datasets import DatasetError, load_creditcard, load_events, load_fdh

    if dataset == "events":
        if tenant is None:
            raise DatasetError("--tenant is required with --dataset events")
        return load_events(
            data,
            tenant=tenant,
            event_type=event_type,
            start=start,
            end=end,
            unlabelled=unlabelled,
            inputs=manifest.inputs if manifest is not None else None,
            schema=manifest.paths if manifest is not None else None,
        )
    path = Path(data)
    if not path.is_file():
        raise DatasetError(f"{data} is not a file")
    if dataset == "fdh":
        return load_fdh(path, start=start, end=end, progress=_say)
    return load_creditcard(path)


def _range(
    dataset: str, low: str | None, high: str | None
) -> tuple[float | None, float | None, tuple[str, str] | None]:
    from riskguard.adapters.ml.datasets import DatasetError, parse_bound

    start = parse_bound(low, dataset=dataset, end=False) if low is not None else None
    end = parse_bound(high, dataset=dataset, end=True) if high is not None else None
    if start is not None and end is not None and end <= start:
        raise DatasetError(f"the range {low} .. {high} is empty")
    text = (low or "start", high or "end") if (low or high) else None
    return start, end, text


def _mask(ts: Any, start: float | None, end: float | None) -> Any:
    import numpy as np

    mask = np.ones(len(ts), dtype=bool)
    if start is not None:
        mask &= ts >= start
    if end is not None:
        mask &= ts < end
    return mask


def _parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {item!r} is not key=value")
        params[key.strip()] = value.strip()
    return params


def _compact(metrics: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    c = metrics.get("confusion", {})
    return (
        f"ROC-AUC {fmt(metrics.get('roc_auc'))}, AUPRC {fmt(metrics.get('auprc'))}, "
        f"precision {fmt(metrics.get('precision'))} and recall {fmt(metrics.get('recall'))} "
        f"at {metrics.get('threshold')}, confusion tp {c.get('tp')} fp {c.get('fp')} "
        f"tn {c.get('tn')} fn {c.get('fn')} ({metrics.get('rows'):,} rows, "
        f"{metrics.get('positives'):,} frauds)"
    )


@model_app.command("train")
def train(
    dataset: Annotated[str, typer.Option(help="creditcard | fdh | events")],
    data: Annotated[str, typer.Option(help="CSV file (creditcard, fdh) or database URL (events).")],
    kind: Annotated[str, typer.Option(help="isolation_forest | gbm | online")],
    out: Annotated[
        Path | None,
        typer.Option(help="Registry directory to write the version into (default: --dir's)."),
    ] = None,
    train_from: Annotated[str | None, typer.Option(help="Training start (date or Time).")] = None,
    train_to: Annotated[str | None, typer.Option(help="Training end (inclusive date).")] = None,
    test_from: Annotated[str | None, typer.Option(help="Test start: also evaluate.")] = None,
    test_to: Annotated[str | None, typer.Option(help="Test end (inclusive date).")] = None,
    tenant: Annotated[str | None, typer.Option(help="events: tenant id or name.")] = None,
    event_type: Annotated[str, typer.Option(help="events: event type to learn.")] = "transaction",
    unlabelled: Annotated[
        str, typer.Option(help="events: unlabelled decisions are 'legitimate' or 'skip'.")
    ] = "legitimate",
    param: Annotated[
        list[str] | None, typer.Option(help="A training parameter key=value (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a model version and write it (verified on write) into a registry directory."""
    if dataset not in _DATASETS:
        raise _fail(f"--dataset must be one of {', '.join(_DATASETS)}")
    if kind not in _KINDS:
        raise _fail(f"--kind must be one of {', '.join(_KINDS)}")
    try:
        params = _parse_params(param or [])
    except ValueError as exc:
        raise _fail(str(exc)) from None

    from riskguard.adapters.ml.artifact import write_artifact
    from riskguard.adapters.ml.datasets import known_compromised_mask
    from riskguard.adapters.ml.registry import default_model_dir
    from riskguard.adapters.ml.training import train_model

    try:
        train_start, train_end, train_text = _range(dataset, train_from, train_to)
        test_start, test_end, test_text = _range(dataset, test_from, test_to)
        has_test = test_from is not None or test_to is not None
        ranges = [(train_start, train_end)] + ([(test_start, test_end)] if has_test else [])
        starts = [s for s, _ in ranges]
        ends = [e for _, e in ranges]
        frame = _load_frame(
            dataset,
            data,
            start=None if None in starts else min(s for s in starts if s is not None),
            end=None if None in ends else max(e for e in ends if e is not None),
            tenant=tenant,
            event_type=event_type,
            unlabelled=unlabelled,
        )
        train_mask = _mask(frame.ts, train_start, train_end)
        test_mask = _mask(frame.ts, test_start, test_end) if has_test else None
        if test_mask is not None and dataset == "fdh":
            first = float(frame.ts[train_mask][0]) if train_mask.any() else float(frame.ts[0])
            start_day = first - first % 86_400
            test_first = test_start if test_start is not None else float(frame.ts[test_mask][0])
            test_mask &= ~known_compromised_mask(
                frame, train_start=start_day, test_start=test_first
            )
        trained = train_model(
            frame,
            kind,
            train_mask=train_mask,
            test_mask=test_mask,
            train_range=train_text,
            test_range=test_text,
            params=params,
            seed=seed,
            progress=_say,
        )
        target = write_artifact(out or default_model_dir(), trained.manifest, trained.files)
    except _errors() as exc:
        raise _fail(_message(exc)) from None
    manifest = trained.manifest
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "version": manifest.version,
                    "kind": manifest.kind,
                    "path": str(target),
                    "training": manifest.training.model_dump(mode="json"),
                    "metrics": manifest.metrics,
                }
            )
        )
        return
    typer.echo(f"model {manifest.version} ({manifest.kind}) written to {target}")
    typer.echo(
        f"trained on {manifest.training.rows:,} rows ({manifest.training.positives:,} frauds), "
        f"{len(manifest.inputs)} inputs"
    )
    for name, figures in manifest.metrics.items():
        typer.echo(f"{name}: {_compact(figures)}")


@model_app.command("evaluate")
def evaluate(
    model: Annotated[Path, typer.Option(help="A model version directory.")],
    data: Annotated[str, typer.Option(help="CSV file (creditcard, fdh) or database URL (events).")],
    from_: Annotated[
        str | None, typer.Option("--from", help="Start (default: the model's test range).")
    ] = None,
    to: Annotated[
        str | None, typer.Option(help="End, inclusive date (default: test range).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Score threshold (default: model's).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Report directory (default: model-reports/<version>).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="events: tenant (default: model's).")] = None,
    unlabelled: Annotated[str, typer.Option(help="events: 'legitimate' or 'skip'.")] = "legitimate",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Score labelled data with a model: ROC-AUC, AUPRC, precision/recall, confusion, PSI."""
    import numpy as np

    from riskguard.adapters.ml.datasets import known_compromised_mask, parse_bound
    from riskguard.adapters.ml.evaluation import psi_of, quality, write_report
    from riskguard.adapters.ml.serving import load_model
    from riskguard.adapters.ml.training import score_rows

    evaluate_errors: tuple[type[Exception], ...] = (*_errors(), ValueError)
    try:
        served = load_model(model)
        manifest = served.manifest
        dataset = manifest.training.dataset
        default = manifest.training.test_range
        low = from_ if from_ is not None else (default[0] if default else None)
        high = to if to is not None else (default[1] if default else None)
        low = None if low == "start" else low
        high = None if high == "end" else high
        start, end, _ = _range(dataset, low, high)
        load_start, train_start = start, 0.0
        if dataset == "fdh":  # rows from the training start: frauds known before the test
            train_start = parse_bound(
                manifest.training.first_event[:10], dataset=dataset, end=False
            )
            load_start = None if start is None else min(start, train_start)
        frame = _load_frame(
            dataset,
            data,
            start=load_start,
            end=end,
            tenant=tenant or manifest.training.params.get("tenant"),
            event_type=manifest.event_types[0],
            unlabelled=unlabelled,
            manifest=manifest,
        )
        if [s.model_dump() for s in frame.inputs] != [s.model_dump() for s in manifest.inputs]:
            raise ValueError("the data's inputs differ from the model's")
        mask = _mask(frame.ts, start, end)
        if dataset == "fdh" and mask.any():
            first = start if start is not None else float(frame.ts[mask][0])
            mask &= ~known_compromised_mask(frame, train_start=train_start, test_start=first)
        rows = frame.take(mask)
        if len(rows.y) == 0:
            raise ValueError("no rows to evaluate in that range")
        scores = score_rows(served, rows.x)
        metrics = quality(scores, rows.y, served.threshold if threshold is None else threshold)
        index = {name: i for i, name in enumerate(served.input_names)}
        stability = {"score": psi_of(manifest.monitoring.score, scores)}
        for name, bins in manifest.monitoring.features.items():
            stability[name] = psi_of(bins, rows.x[:, index[name]])
        where = report or Path("model-reports") / manifest.version
        summary = {
            "model": f"{manifest.version} ({manifest.kind}, trained on {dataset} "
            f"{manifest.training.train_range[0]} .. {manifest.training.train_range[1]})",
            "data": f"{data} ({rows.time_text(float(rows.ts[0]))} .. "
            f"{rows.time_text(float(rows.ts[-1]))})",
        }
        written = write_report(
            where,
            title=f"Evaluation of model {manifest.version}",
            summary=summary,
            metrics=metrics,
            stability=stability,
            scores=scores,
            labels=rows.y,
        )
    except evaluate_errors as exc:
        raise _fail(_message(exc)) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "version": manifest.version,
                    "kind": manifest.kind,
                    "dataset": dataset,
                    "metrics": metrics,
                    "psi": stability,
                    "report": str(written),
                    "mean_score": float(np.mean(scores)),
                }
            )
        )
        return
    typer.echo(f"model {manifest.version} ({manifest.kind}) on {data}")
    typer.echo(_compact(metrics))
    typer.echo("PSI: " + ", ".join(f"{k} {v:.4f}" for k, v in stability.items()))
    typer.echo(f"report: {written}")


@model_app.command("list")
def list_models(
    directory: DirOption = None,
    tenant: TenantOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Model versions in the registry (newest first), verified, with the active one marked."""
    from riskguard.adapters.ml.registry import DEFAULT_SCOPE, ModelRegistry, default_model_dir

    registry = ModelRegistry(directory or default_model_dir())
    try:
        listed = registry.versions()
        active = registry.active(tenant or DEFAULT_SCOPE)
    except _errors() as exc:
        raise _fail(_message(exc)) from None
    if as_json:
        items = [
            {**item.manifest.summary(), "active": item.name == active, "error": None}
            if item.manifest is not None
            else {"version": item.name, "active": item.name == active, "error": item.error}
            for item in listed
        ]
        typer.echo(json.dumps({"active": active, "items": items}))
        return
    if not listed:
        typer.echo(f"no models in {registry.root}")
        return
    for item in listed:
        mark = "*" if item.name == active else " "
        if item.manifest is None:
            typer.echo(f"{mark} {item.name}  UNUSABLE: {item.error}")
            continue
        m = item.manifest
        test = m.metrics.get("test") or {}
        figures = (
            f"test AUPRC {test['auprc']:.4f} ROC-AUC {test['roc_auc']:.4f}"
            if test.get("auprc") is not None and test.get("roc_auc") is not None
            else "no test metrics"
        )
        typer.echo(
            f"{mark} {m.version}  {m.kind:<16} {m.created_at}  {m.training.dataset} "
            f"{m.training.train_range[0]}..{m.training.train_range[1]}  {figures}"
        )


@model_app.command("activate")
def activate(
    version: Annotated[str, typer.Argument(help="The version to activate (m-<16 hex>).")],
    directory: DirOption = None,
    tenant: TenantOption = None,
    actor: Annotated[str, typer.Option(help="Who activates (recorded in the log).")] = "cli",
) -> None:
    """Make a version the active model (verified first; atomic; recorded, and appended to the
    audit log when RISKGUARD_AUDIT is on)."""
    from riskguard.adapters.ml.registry import DEFAULT_SCOPE, ModelRegistry, default_model_dir

    registry = ModelRegistry(directory or default_model_dir())
    record = _audited(
        lambda: registry.activate(version, scope=tenant or DEFAULT_SCOPE, actor=actor), actor
    )
    previous = record.previous or "none"
    typer.echo(f"activated {record.version} for scope {record.scope} (previous: {previous})")


@model_app.command("rollback")
def rollback(
    directory: DirOption = None,
    tenant: TenantOption = None,
    actor: Annotated[str, typer.Option(help="Who rolls back (recorded in the log).")] = "cli",
) -> None:
    """Return to the version that was active before the current one (appended to the audit
    log when RISKGUARD_AUDIT is on)."""
    from riskguard.adapters.ml.registry import DEFAULT_SCOPE, ModelRegistry, default_model_dir

    registry = ModelRegistry(directory or default_model_dir())
    record = _audited(lambda: registry.rollback(scope=tenant or DEFAULT_SCOPE, actor=actor), actor)
    typer.echo(f"rolled back scope {record.scope} to {record.version} (was {record.previous})")


def _audited(change: Callable[[], Any], operator: str) -> Any:
    """Run a registry change (an ``Activation`` back) and append it to the service's audit log
    (``RISKGUARD_*`` settings, as ``riskguard serve`` reads them; actor ``cli``, the
    ``--actor`` name in the body). The log is opened and read first: when it is on but cannot
    be used, nothing is changed. A change made whose record then fails exits 2 saying so."""
    import asyncio

    from riskguard.adapters.ml.registry import audit_entry
    from riskguard.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise _fail(str(exc)) from None
    if not settings.audit:
        try:
            return change()
        except _errors() as exc:
            raise _fail(_message(exc)) from None

    async def work() -> tuple[Any, Exception | None]:
        from riskguard.adapters.audit.keys import AuditKeyError
        from riskguard.wiring import build_audit

        try:
            if settings.auto_migrate:
                from riskguard.adapters.sql.migrate import upgrade

                await asyncio.to_thread(upgrade, settings.database_url)
            audit = build_audit(settings)
        except AuditKeyError as exc:
            raise _fail(f"audit log: {exc}; nothing was changed") from None
        except Exception as exc:
            raise _fail(
                f"the audit log is unavailable ({type(exc).__name__}); nothing was changed"
            ) from None
        try:
            try:
                await audit.start()
                await audit.latest_checkpoint()  # the log answers before anything changes
            except Exception as exc:
                raise _fail(
                    f"the audit log is unavailable ({type(exc).__name__}); nothing was changed"
                ) from None
            try:
                record = await asyncio.to_thread(change)
            except _errors() as exc:
                raise _fail(_message(exc)) from None
            entry = audit_entry(record)
            if operator != "cli":
                entry["body"]["operator"] = operator
            try:
                await audit.append_one(actor="cli", **entry)
            except Exception as exc:
                return record, exc
            return record, None
        finally:
            await audit.close()

    record, failed = asyncio.run(work())
    if failed is not None:
        what = "activated" if record.action == "activate" else "rolled back to"
        typer.echo(
            f"riskguard: {what} {record.version} for scope {record.scope}, but the audit log "
            f"could not record it ({type(failed).__name__})",
            err=True,
        )
        raise typer.Exit(EXIT_UNUSABLE)
    return record

"""``riskguard audit``: verify the stored audit log, make a signing key.

``verify`` exits 0 with a summary when every check passes, 1 naming the first bad record (or
checkpoint) when one fails, 2 when it cannot run (no key, unreadable database, bad option).
Heavy imports wait until a command runs: the rest of the command line stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)

EXIT_PROBLEMS = 1
EXIT_UNUSABLE = 2


def _fail(message: str, code: int = EXIT_UNUSABLE) -> typer.Exit:
    typer.echo(f"riskguard: {message}", err=True)
    return typer.Exit(code)


def _default_database_url() -> str:
    from riskguard.settings import DEFAULT_DATABASE_URL

    return DEFAULT_DATABASE_URL


def _verifier(public_key: str | None) -> Any:
    """The key to check checkpoints with: ``--public-key`` (or RISKGUARD_AUDIT_PUBLIC_KEY),
    else the public half of the configured signing key file when this machine has it."""
    from riskguard.adapters.audit.keys import AuditKeyError, AuditSettings, load_verifier

    try:
        settings = AuditSettings()
    except ValueError as exc:
        raise _fail(f"invalid audit settings: {exc}") from None
    value = public_key or settings.public_key
    if value is None:
        path = settings.key_path
        if path is None or not path.exists():
            raise _fail(
                "no key to check checkpoints with: pass --public-key <vkey or file> "
                "(riskguard audit keygen prints it)"
            )
        value = str(path)
    try:
        return load_verifier(value)
    except AuditKeyError as exc:
        raise _fail(str(exc)) from None


def _saved_checkpoints(paths: list[Path]) -> list[Any]:
    """Checkpoints an auditor kept (signed notes): checked against the log like stored ones."""
    from riskguard.adapters.audit.checkpoint import Checkpoint, InvalidNote
    from riskguard.adapters.audit.verify import StoredCheckpoint

    saved = []
    for path in paths:
        try:
            note = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(f"cannot read checkpoint {path}: {type(exc).__name__}") from None
        try:
            checkpoint = Checkpoint.parse(note[: note.rfind("\n\n") + 1])
        except InvalidNote as exc:
            raise _fail(f"{path} is not a checkpoint: {exc}") from None
        saved.append(
            StoredCheckpoint(checkpoint.size, checkpoint.root_hash.hex(), note, source=str(path))
        )
    return saved


@audit_app.command("verify")
def verify(
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="RISKGUARD_DATABASE_URL",
            help="The database (default: RISKGUARD_DATABASE_URL, else the embedded SQLite file).",
            show_default=False,
        ),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            envvar="RISKGUARD_AUDIT_PUBLIC_KEY",
            help="Verifier key (name+id+key) or a file holding it.",
            show_default=False,
        ),
    ] = None,
    inclusion: Annotated[
        list[int] | None,
        typer.Option(min=1, help="Prove this record's inclusion (repeatable).", show_default=False),
    ] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            help="A checkpoint saved earlier (signed note file): the log must still contain "
            "and extend it (repeatable).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify the audit log and name the first bad record.

    Checks the chain, the gapless sequence, every checkpoint's signature and root, and
    consistency between checkpoints.
    """
    from riskguard.adapters.sql.audit import verify_database
    from riskguard.adapters.sql.urls import redact
    from riskguard.ports import DependencyUnavailable

    url = database_url or _default_database_url()
    verifier = _verifier(public_key)
    saved = _saved_checkpoints(checkpoint or [])
    try:
        report = verify_database(url, verifier, inclusion=inclusion or [], extra_checkpoints=saved)
    except (DependencyUnavailable, ValueError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps({"database": redact(url), **report.to_dict()}, indent=2))
    elif report.ok:
        typer.echo(
            f"audit log OK: {report.records} records, chain intact, "
            f"{report.checkpoints} checkpoints verified (newest at {report.latest_checkpoint}), "
            f"{report.consistency_proofs} consistency proofs, "
            f"{report.unsigned} records not yet covered by a checkpoint"
        )
        typer.echo(f"key {report.key}")
        for proof in report.inclusions:
            where = "checkpoint" if proof.signed else "unsigned tree"
            typer.echo(
                f"record {proof.seq} is included in the {where} of {proof.tree_size} records "
                f"({len(proof.proof)} proof hashes verified)"
            )
    else:
        typer.echo(f"audit log FAILED after {report.records} good records: {report.problem}")
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEMS)


@audit_app.command("keygen")
def keygen(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Key file to create (default: RISKGUARD_AUDIT_SIGNING_KEY, else "
            "./riskguard-audit.key).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Key name = the log's origin (default: RISKGUARD_AUDIT_ORIGIN)."),
    ] = None,
) -> None:
    """Create an Ed25519 signing key (mode 0600) and print its public verifier key."""
    from riskguard.adapters.audit.checkpoint import InvalidNote
    from riskguard.adapters.audit.keys import (
        DEV_KEY_PATH,
        AuditKeyError,
        AuditSettings,
        write_new_key,
    )

    try:
        settings = AuditSettings()
    except ValueError as exc:
        raise _fail(f"invalid audit settings: {exc}") from None
    path = out or settings.signing_key or DEV_KEY_PATH
    try:
        signer = write_new_key(path, name or settings.origin)
    except (AuditKeyError, InvalidNote) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot write {path}: {exc.strerror}") from None
    typer.echo(f"wrote signing key {path} (keep it secret); its verifier key:", err=True)
    typer.echo(signer.verifier.vkey)

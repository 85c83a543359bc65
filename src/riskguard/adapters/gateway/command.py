"""``riskguard gateway``: the command line of the zero-trust gateway (kept light: the proxy and
its dependencies are imported only when the command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"riskguard: {message}", err=True)
    return typer.Exit(2)


def gateway(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Configuration file (YAML or JSON).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default 8080).")] = None,
    upstream: Annotated[
        list[str] | None, typer.Option(help="An upstream service, NAME=URL (repeatable).")
    ] = None,
    route: Annotated[
        list[str] | None,
        typer.Option(help="A route, PREFIX=UPSTREAM; PREFIX/*=UPSTREAM strips it (repeatable)."),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant the decisions are recorded under.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Processes.")] = 1,
) -> None:
    """Run the zero-trust gateway: every request verified (JWT), rate-limited and risk-scored
    before it reaches an upstream (identity from RISKGUARD_JWT_*, stores from RISKGUARD_*)."""
    from riskguard.adapters.gateway.config import GatewayConfigError, load_config
    from riskguard.adapters.gateway.settings import load_gateway_settings
    from riskguard.settings import SettingsError, load_settings

    try:
        resolved, base_dir = load_config(
            config, host=host, port=port, upstreams=upstream, routes=route, tenant=tenant
        )
        resolved.catalogs(base_dir)  # declared routes and OpenAPI documents load now
        settings = load_settings()
        identity = load_gateway_settings()
    except (GatewayConfigError, SettingsError) as exc:
        raise _fail(str(exc)) from None
    if not identity.identity_configured:
        raise _fail(
            "the gateway verifies every request: set RISKGUARD_JWT_JWKS_URL or "
            "RISKGUARD_JWT_KEYS_FILE, with RISKGUARD_JWT_ISSUER and RISKGUARD_JWT_AUDIENCE"
        )
    if identity.jwt_keys_file is not None:
        from riskguard.adapters.gateway.settings import build_key_source

        try:
            build_key_source(identity)  # a key file that cannot be used fails here, not later
        except SettingsError as exc:
            raise _fail(str(exc)) from None
    if workers > 1 and settings.redis_url is None:
        raise _fail("several workers need shared state: set RISKGUARD_REDIS_URL")
    from riskguard.adapters.gateway.proxy import GatewayStartError, serve

    try:
        serve(resolved, base_dir=base_dir, workers=workers)
    except GatewayStartError as exc:
        raise _fail(f"gateway: {exc}") from None

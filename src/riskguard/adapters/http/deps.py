"""Request dependencies shared by every router: who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from riskguard.services.auth import Principal


async def principal(request: Request) -> Principal:
    """The caller of a /v1 request, from its bearer key (401/403 via the error handlers)."""
    return await request.app.state.container.keys.verify(request.headers.get("authorization"))  # type: ignore[no-any-return]


Caller = Annotated[Principal, Depends(principal)]

"""Dependencies of the REST API routes: who is calling, with which scope, and the Hub.

There is no session dependency on purpose: a route opens its transaction itself with
`async with hub.sessionmaker.begin() as session:`, so its one unit of work is visible in it
and commits before the response is sent.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.apikeys import Principal, Scope, require
from app.routers.deps import HubDep, hub_of

__all__ = ["AdminKey", "HubDep", "Principal", "ReadKey", "WriteKey", "get_principal", "who"]

# Only for the OpenAPI schema (a bearer scheme, the Authorize button in /docs): it answers
# None both for a missing header and for another scheme, which get different codes here.
_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="whk_…",
    description="An API key, created with `wecom-hub apikeys create` or POST /api/v1/apikeys.",
)


async def get_principal(
    request: Request,
    _shown_in_openapi: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    return await hub_of(request).api_keys.authenticate(request.headers.get("Authorization"))


def _scoped(needed: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        require(principal, needed)
        return principal

    return check


ReadKey = Annotated[Principal, Depends(_scoped(Scope.READ))]
WriteKey = Annotated[Principal, Depends(_scoped(Scope.WRITE))]
AdminKey = Annotated[Principal, Depends(_scoped(Scope.ADMIN))]


def who(principal: Principal) -> str:
    """How an action asked for over the API names who asked, in its reason and payload."""
    return f"API key {principal.key_id} ({principal.name})"

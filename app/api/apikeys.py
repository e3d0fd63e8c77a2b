"""/api/v1/apikeys: managing the API's own keys, with an admin key.

The first admin key comes from the CLI (`wecom-hub apikeys create --scope admin`).
"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app import apikeys
from app.api.deps import AdminKey, HubDep
from app.api.idempotency import IdempotencyDep
from app.api.pagination import RowId
from app.api.schemas.apikeys import ApiKeyOut, ApiKeyPage, CreatedApiKey, NewApiKey

router = APIRouter(prefix="/apikeys", tags=["API keys"])


@router.get("", response_model=ApiKeyPage)
async def list_api_keys(_: AdminKey, hub: HubDep) -> ApiKeyPage:
    """Every key, revoked ones included, newest first; a single page (there are few)."""
    async with hub.sessionmaker.begin() as session:
        views = await apikeys.list_keys(session)
    return ApiKeyPage(data=[ApiKeyOut.model_validate(view) for view in views], next_cursor=None)


@router.post("", status_code=201, response_model=CreatedApiKey)
async def create_api_key(
    new: NewApiKey, _: AdminKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """The answer is the only time the whole key is shown."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        view, key = await apikeys.create_key(session, name=new.name, scope=new.scope)
        return await idem.remember(session, 201, CreatedApiKey.of(view, key))


@router.delete("/{key_id}", response_model=ApiKeyOut)
async def revoke_api_key(key_id: RowId, _: AdminKey, hub: HubDep) -> ApiKeyOut:
    """Requests with the key are refused on every server within a few seconds. Revoking a
    revoked key changes nothing and answers the same."""
    async with hub.sessionmaker.begin() as session:
        view = await apikeys.revoke_key(session, key_id)
    return ApiKeyOut.model_validate(view)

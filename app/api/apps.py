"""/api/v1/apps: the WeCom apps whose callbacks wecom-hub receives (admin keys only). Token,
EncodingAESKey and Secret are write-only: no answer contains them, not even masked."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse

from app import wecom_apps
from app.api.deps import AdminKey, HubDep
from app.api.idempotency import IdempotencyDep
from app.api.schemas.apps import AppPage
from app.wecom_apps import AppPatch, AppSpec, AppView

router = APIRouter(prefix="/apps", tags=["apps"])

SlugParam = Annotated[str, Path(examples=["shop"])]


@router.get("", response_model=AppPage)
async def apps(_: AdminKey, hub: HubDep) -> AppPage:
    """Every app that is not removed, by slug; a single page (there are few)."""
    async with hub.sessionmaker() as session:
        found = await wecom_apps.list_apps(session)
    return AppPage(data=[wecom_apps.app_view(app) for app in found], next_cursor=None)


@router.post("", status_code=201, response_model=AppView)
async def add(spec: AppSpec, _: AdminKey, hub: HubDep, idem: IdempotencyDep) -> JSONResponse:
    """Its callback URL is /callback/{slug}; the secrets are stored sealed."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        app = await wecom_apps.add_app(session, hub.box, spec)
        return await idem.remember(session, 201, wecom_apps.app_view(app))


@router.get("/{slug}", response_model=AppView)
async def app(slug: SlugParam, _: AdminKey, hub: HubDep) -> AppView:
    async with hub.sessionmaker() as session:
        return wecom_apps.app_view(await wecom_apps.get_app(session, slug))


@router.patch("/{slug}", response_model=AppView)
async def update(
    slug: SlugParam, patch: AppPatch, _: AdminKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """Rotate the Token, EncodingAESKey or Secret, or rename: callbacks verify with new keys
    and actions call WeCom with the new Secret within app_cache_seconds on every server."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        view = await wecom_apps.update_app(session, hub.box, slug, patch)
        return await idem.remember(session, 200, view)


ForceParam = Annotated[
    bool,
    Query(description="Remove it although enabled rules are for it, disabling them."),
]


@router.delete("/{slug}", status_code=204)
async def remove(slug: SlugParam, _: AdminKey, hub: HubDep, force: ForceParam = False) -> Response:
    """Callbacks to the slug stop verifying; its events and customers stay. While enabled
    rules are for the app: 409 `app_in_use` naming them (in `rules`), unless `force=true`,
    which disables them (a rule names its app by id: it would never apply again, not even
    to a new app given the same slug)."""
    async with hub.sessionmaker.begin() as session:
        await wecom_apps.remove_app(session, slug, force=force)
    return Response(status_code=204)

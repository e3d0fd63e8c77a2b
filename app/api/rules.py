"""/api/v1/rules: welcome, tag and reply rules, validated exactly as the CLI validates them
(422 names each field). Over HTTP a rule never names a path on the server: attachment files
are uploaded with POST /api/v1/media and named by their id (`sha256`)."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from app.api.deps import HubDep, ReadKey, WriteKey
from app.api.idempotency import IdempotencyDep
from app.api.pagination import CursorParam, Limit, PageRequest, RowId
from app.api.schemas.rules import RulePage
from app.automations import store
from app.automations.store import RuleKind, RulePatch, RuleSpec, RuleView
from app.queries import before_id

router = APIRouter(prefix="/rules", tags=["rules"])


@router.get("", response_model=RulePage)
async def rules(
    _: ReadKey,
    hub: HubDep,
    kind: RuleKind | None = None,
    app: Annotated[str | None, Query(description="Only the rules of this app's slug.")] = None,
    enabled: bool | None = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> RulePage:
    page = PageRequest.of(limit, cursor, kind=kind, app=app, enabled=enabled)
    async with hub.sessionmaker() as session:
        rows = await store.list_rules(
            session,
            kind=kind,
            app=app,
            enabled=enabled,
            after_id=before_id(page.after),
            limit=limit + 1,
        )
    kept, next_cursor = page.page(rows, key=lambda rule: [rule.id])
    return RulePage(data=kept, next_cursor=next_cursor)


@router.post("", status_code=201, response_model=RuleView)
async def create(spec: RuleSpec, _: WriteKey, hub: HubDep, idem: IdempotencyDep) -> JSONResponse:
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        view = await store.create_rule(session, spec, media_dir=None, paths=False)
        return await idem.remember(session, 201, view)


@router.get("/{rule_id}", response_model=RuleView)
async def rule(rule_id: RowId, _: ReadKey, hub: HubDep) -> RuleView:
    async with hub.sessionmaker() as session:
        return await store.get_rule(session, rule_id)


@router.patch("/{rule_id}", response_model=RuleView)
async def update(
    rule_id: RowId, patch: RulePatch, _: WriteKey, hub: HubDep, idem: IdempotencyDep
) -> JSONResponse:
    """`match` or `content` given replace the old ones whole; the result is validated like
    a new rule."""
    async with hub.sessionmaker.begin() as session:
        if (replay := await idem.replay(session)) is not None:
            return replay
        view = await store.update_rule(session, rule_id, patch, media_dir=None, paths=False)
        return await idem.remember(session, 200, view)


@router.delete("/{rule_id}", status_code=204)
async def delete(rule_id: RowId, _: WriteKey, hub: HubDep) -> Response:
    """Actions the rule caused keep its name in their payload."""
    async with hub.sessionmaker.begin() as session:
        await store.delete_rule(session, rule_id)
    return Response(status_code=204)

"""/api/v1/customers: the customers, filtered by corp, name, tag, channel, member, status and
when they were added; one customer with everything that happened to them."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.deps import HubDep, ReadKey
from app.api.pagination import DEFAULT_LIMIT, CursorParam, Instant, Limit, PageRequest
from app.api.schemas.customers import CustomerDetailOut, CustomerOut, CustomerPage
from app.queries import app_scope, before_id
from app.queries import customers as queries
from app.queries.customers import CustomerFilters, StatusFilter

router = APIRouter(prefix="/customers", tags=["Customers"])

AppSlug = Annotated[
    str | None, Query(max_length=64, description="An app's slug: its corp's customers only.")
]


@router.get("", response_model=CustomerPage)
async def list_customers(
    _: ReadKey,
    hub: HubDep,
    app: AppSlug = None,
    q: Annotated[
        str | None, Query(min_length=1, max_length=100, description="Name contains (any case).")
    ] = None,
    tag: Annotated[
        str | None, Query(max_length=128, description="A tag id the customer has.")
    ] = None,
    state: Annotated[
        str | None, Query(max_length=64, description="The channel state a follow came by.")
    ] = None,
    userid: Annotated[
        str | None, Query(max_length=128, description="A member the customer is related to.")
    ] = None,
    status: Annotated[
        StatusFilter | None,
        Query(description="Of a follow; churned: the customer deleted the member."),
    ] = None,
    added_since: Annotated[
        Instant | None, Query(description="A follow added at or after this.")
    ] = None,
    added_until: Annotated[Instant | None, Query(description="A follow added before this.")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> CustomerPage:
    """Newest first (the order wecom-hub first saw them). The follow filters must all hold
    for one follow: `state=expo&status=churned` is "came by the expo channel and then
    deleted that member"."""
    page = PageRequest.of(
        limit,
        cursor,
        app=app,
        q=q,
        tag=tag,
        state=state,
        userid=userid,
        status=status,
        added_since=added_since,
        added_until=added_until,
    )
    before = before_id(page.after)
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        filters = CustomerFilters(
            corp_id=scope.corp_id if scope else None,
            q=q,
            tag=tag,
            state=state,
            userid=userid,
            status=status,
            added_since=added_since,
            added_until=added_until,
        )
        items = await queries.list_customers(session, filters, before_id=before, limit=limit + 1)
    data, next_cursor = page.page(items, key=lambda item: [item.customer.id])
    return CustomerPage(data=[CustomerOut.of(item) for item in data], next_cursor=next_cursor)


@router.get("/{external_userid}", response_model=CustomerDetailOut)
async def get_customer(
    external_userid: Annotated[str, Path(max_length=128)],
    _: ReadKey,
    hub: HubDep,
    app: Annotated[
        str | None,
        Query(
            max_length=64,
            description="An app's slug, to pick its corp's customer. Without it, if two "
            "corps know this external_userid, the one wecom-hub saw first is answered.",
        ),
    ] = None,
) -> CustomerDetailOut:
    """The customer, their follows (tag names resolved), the groups they are in and their
    timeline: why a customer got no welcome is the welcome action's status and reason
    there."""
    async with hub.sessionmaker() as session:
        scope = await app_scope(session, app)
        detail = await queries.get_customer(
            session, external_userid, corp_id=scope.corp_id if scope else None
        )
    return CustomerDetailOut.of(detail)

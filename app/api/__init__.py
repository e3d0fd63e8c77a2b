"""The REST API, /api/v1: one router module per resource, wire schemas in `schemas`, the
domain services beneath doing the work. Errors are AppErrors, answered as problem+json."""

from fastapi import APIRouter

from app.api import (
    actions,
    apikeys,
    apps,
    broadcasts,
    channels,
    customers,
    events,
    groups,
    media,
    messages,
    operations,
    rules,
    stats,
    tags,
    webhooks,
)
from app.routers.problems import problem_responses

# Every route authenticates (401, 403) and validates (422); lists refuse a foreign cursor and
# writes a bad Idempotency-Key (400); items may be missing (404) or in another state (409);
# and any route answers 503 while Postgres is unreachable.
router = APIRouter(prefix="/api/v1", responses=problem_responses(400, 401, 403, 404, 409, 422, 503))
router.include_router(apikeys.router)
router.include_router(apps.router)
router.include_router(rules.router)
router.include_router(media.router)
router.include_router(events.router)
router.include_router(actions.router)
router.include_router(operations.router)
router.include_router(customers.router)
router.include_router(groups.router)
router.include_router(tags.router)
router.include_router(messages.router)
router.include_router(stats.router)
router.include_router(webhooks.router)
router.include_router(channels.router)
router.include_router(broadcasts.router)

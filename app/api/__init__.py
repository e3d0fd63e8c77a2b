"""The REST API, /api/v1: one router module per resource, wire schemas in `schemas`, the
domain services beneath doing the work. Errors are AppErrors, answered as problem+json."""

from fastapi import APIRouter

from app.api import apikeys

router = APIRouter(prefix="/api/v1")
router.include_router(apikeys.router)

"""Liveness, readiness and Prometheus metrics for devops."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.db import is_unavailable
from app.routers.deps import HubDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(hub: HubDep) -> JSONResponse:
    """Ready when Postgres answers: a load balancer stops sending callbacks otherwise."""
    try:
        async with hub.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        return JSONResponse({"status": "database_unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

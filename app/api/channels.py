"""/api/v1/channels."""

from fastapi import APIRouter

router = APIRouter()

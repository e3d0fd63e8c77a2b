"""/api/v1/broadcasts."""

from fastapi import APIRouter

router = APIRouter()

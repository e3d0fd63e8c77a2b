from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

if TYPE_CHECKING:
    from app.main import Hub


def hub_of(request: Request) -> "Hub":
    hub: Hub = request.app.state.hub
    return hub


async def get_hub(request: Request) -> "Hub":
    """Async on purpose: FastAPI runs a plain `def` dependency in a worker thread."""
    return hub_of(request)


HubDep = Annotated["Hub", Depends(get_hub)]

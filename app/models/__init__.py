"""SQLAlchemy tables. Only ORM classes live here; wire schemas live next to their routers."""

from app.models.base import Base
from app.models.event import Event
from app.models.wecom_app import WecomApp

__all__ = ["Base", "Event", "WecomApp"]

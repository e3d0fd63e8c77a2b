"""Wire schemas of the REST API, one module per resource, apart from the ORM tables.

`Page` is the envelope of every list: `data`, and `next_cursor` to pass back for the next
page (opaque; null on the last page).
"""

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(BaseModel, Generic[ItemT]):
    data: list[ItemT]
    next_cursor: str | None = Field(
        description="Pass it back as `cursor` for the next page; null when there is none."
    )

"""An uploaded attachment file on the wire."""

from pydantic import BaseModel, ConfigDict, Field


class MediaOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "kind": "image",
                    "filename": "poster.png",
                    "size": 183204,
                }
            ]
        }
    )

    id: str = Field(description="The file's SHA-256: give it as an attachment's `sha256`.")
    kind: str
    filename: str = Field(description="What WeCom shows for a file attachment.")
    size: int

"""What the operations (tag a customer, write to a 微信客服 customer, message members)
take on the wire."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

TagId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class TagChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"add": ["etAbc123"], "remove": [], "userid": None}]},
    )

    add: list[TagId] = Field(default_factory=list, max_length=100)
    remove: list[TagId] = Field(default_factory=list, max_length=100)
    userid: Id | None = Field(
        default=None,
        description="The member to tag as (the customer must be their friend); default: the "
        "member the customer most recently added.",
    )


class KfMessageIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "app": "shop",
                    "open_kfid": "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw",
                    "external_userid": "wmAJ2GCAAAme1XQ5Nz0b6Ev7JnvB0Whg",
                    "text": "您的订单已发货",
                }
            ]
        },
    )

    app: Id = Field(description="Slug of the app that runs the 微信客服 account.")
    open_kfid: Id
    external_userid: Id
    text: str = Field(min_length=1, max_length=2048)


class AppMessageIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "app": "shop",
                    "touser": ["zhangsan", "lisi"],
                    "msgtype": "markdown",
                    "content": "**新客户** 来自渠道 store_sh",
                }
            ]
        },
    )

    app: Id = Field(description="Slug of an app with an agent_id.")
    touser: list[Id] = Field(default_factory=list, max_length=1000)
    toparty: list[Id] = Field(default_factory=list, max_length=100)
    totag: list[Id] = Field(default_factory=list, max_length=100)
    msgtype: Literal["text", "markdown"] = "text"
    content: str = Field(min_length=1, max_length=2048)

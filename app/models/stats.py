"""What the statistics read (app/queries/stats.py): counters per hour, kept by the projection
in the processor's transaction (app/processing/projection.py), and an index on the welcome
actions.

Counted from the event history, one WeCom event once (the events table's dedup key), they
could be counted from `events` at each request, but at a million events a 30-day count takes
half a second or more (a churn's channel and age are each a lookup of the add before it), and
these tables answer in milliseconds. Per UTC hour rather than per day: a day is a day in the
time zone a request names, and an hour lies within one local day in every zone whose offset
is whole hours. The hour leads each key, so that a range is one index range scan with or
without a corp.
"""

from datetime import datetime

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.action import Action
from app.models.base import Base


class CustomerStat(Base):
    """Per hour (of the event's CreateTime), corp, member and channel state ('' for none).

    A churn (del_follow_user) or a deletion by the member (del_external_contact) counts under
    the state of the add that brought that customer to that member, and churned_7d when that
    add was less than 7 days before. Half adds and transfers are not counted: see
    app/processing/projection.py."""

    __tablename__ = "customer_stats"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    userid: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(64), primary_key=True)
    added: Mapped[int] = mapped_column(server_default="0")
    churned: Mapped[int] = mapped_column(server_default="0")
    deleted_by_member: Mapped[int] = mapped_column(server_default="0")
    churned_7d: Mapped[int] = mapped_column(server_default="0")


class GroupStat(Base):
    """Members who joined or quit customer groups, per hour, corp, group, change (`join`,
    `quit`) and scene (JoinScene / QuitScene as WeCom sent it; -1 when it sent none)."""

    __tablename__ = "group_stats"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    corp_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    change: Mapped[str] = mapped_column(String(8), primary_key=True)
    scene: Mapped[int] = mapped_column(primary_key=True)
    members: Mapped[int] = mapped_column(server_default="0")


# Welcome outcomes are written by the action runner, not the processor, so they are counted
# from the actions themselves: by creation time, from this index alone (an index-only scan:
# 120,000 welcomes in 30 days, 60 ms instead of 170 ms reading the table).
ix_actions_welcome = Index(
    "ix_actions_welcome",
    Action.created_at,
    postgresql_include=["corp_id", "status", "finished_at", "deadline", "reason", "error_code"],
    postgresql_where=text("kind = 'welcome'"),
)

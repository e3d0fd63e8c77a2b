"""indexes for the API's lists and filters; ids for customers and groups (keyset pages)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 06:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_EVENT_INDEXES: list[tuple[str, list[Any], Any]] = [
    ("ix_events_app_id_id", ["app_id", "id"], None),
    ("ix_events_received_at", ["received_at"], None),
    ("ix_events_type_id", ["type", "id"], None),
    ("ix_events_family_id", ["family", "id"], None),
    ("ix_events_status_id", ["status", "id"], None),
    (
        "ix_events_external_userid",
        [sa.text("(payload ->> 'ExternalUserID')"), "id"],
        sa.text("payload ? 'ExternalUserID'"),
    ),
    ("ix_events_chat_id", [sa.text("(payload ->> 'ChatId')"), "id"], sa.text("payload ? 'ChatId'")),
]


def upgrade() -> None:
    for table in ("external_contacts", "customer_groups"):
        op.add_column(table, sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False))
        op.create_unique_constraint(op.f(f"uq_{table}_id"), table, ["id"])
    op.create_index("ix_follows_customer", "follows", ["corp_id", "external_userid"])
    op.create_index("ix_follows_state", "follows", ["state"])
    op.create_index("ix_follows_tag_ids", "follows", ["tag_ids"], postgresql_using="gin")
    op.create_index("ix_messages_sender_id", "messages", ["sender", "id"])
    op.create_index("ix_group_members_member", "group_members", ["corp_id", "member_id"])
    # events takes every callback: its indexes are built without blocking inserts (outside
    # a transaction; the advisory lock in migrations/env.py still keeps replicas apart).
    with op.get_context().autocommit_block():
        # (app_id, received_at) served no query; (received_at) serves since/until.
        op.drop_index(
            "ix_events_app_id_received_at",
            table_name="events",
            postgresql_concurrently=True,
            if_exists=True,
        )
        for name, columns, where in _EVENT_INDEXES:
            # A build interrupted before leaves an invalid index of that name: start over.
            op.drop_index(name, table_name="events", postgresql_concurrently=True, if_exists=True)
            op.create_index(
                name, "events", columns, postgresql_where=where, postgresql_concurrently=True
            )


def downgrade() -> None:
    op.drop_index("ix_group_members_member", table_name="group_members")
    op.drop_index("ix_messages_sender_id", table_name="messages")
    op.create_index("ix_events_app_id_received_at", "events", ["app_id", "received_at"])
    for name in (
        "ix_events_received_at",
        "ix_events_chat_id",
        "ix_events_external_userid",
        "ix_events_status_id",
        "ix_events_family_id",
        "ix_events_type_id",
        "ix_events_app_id_id",
    ):
        op.drop_index(name, table_name="events")
    op.drop_index("ix_follows_tag_ids", table_name="follows")
    op.drop_index("ix_follows_state", table_name="follows")
    op.drop_index("ix_follows_customer", table_name="follows")
    for table in ("external_contacts", "customer_groups"):
        op.drop_constraint(op.f(f"uq_{table}_id"), table, type_="unique")
        op.drop_column(table, "id")

"""retention: an action or message outlives the event it came from (ON DELETE SET NULL);
messages indexed by event

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 08:00:00

Old processed events are deleted (WECOM_HUB_EVENT_RETENTION_DAYS, app/housekeeping.py);
the actions and messages they led to stay, with event_id NULL. Each deleted event looks up
its messages, hence the index: without it, every batch of deletions would scan messages
once per event.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REFERRING = ("actions", "messages")


def _point_at_events(ondelete: str) -> None:
    """The constraints are swapped NOT VALID (a moment's lock, no scan) and validated after
    that has committed: validation reads the whole table without blocking its writers."""
    for table in _REFERRING:
        name = f"fk_{table}_event_id_events"
        op.drop_constraint(name, table, type_="foreignkey")
        op.create_foreign_key(
            name,
            table,
            "events",
            ["event_id"],
            ["id"],
            ondelete=ondelete,
            postgresql_not_valid=True,
        )
    with op.get_context().autocommit_block():
        for table in _REFERRING:
            op.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT fk_{table}_event_id_events")


def upgrade() -> None:
    # messages takes every message callback: built without blocking inserts (and started
    # over if an interrupted build left an invalid index of that name).
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_messages_event_id",
            table_name="messages",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_messages_event_id", "messages", ["event_id"], postgresql_concurrently=True
        )
    _point_at_events("SET NULL")


def downgrade() -> None:
    _point_at_events("RESTRICT")
    op.drop_index("ix_messages_event_id", table_name="messages")

"""claim actions in deadline order

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 21:42:11.495576
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(
        op.f("ix_actions_due"),
        table_name="actions",
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_index(
        "ix_actions_due",
        "actions",
        ["deadline", "next_attempt_at", "id"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_actions_due",
        table_name="actions",
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_index(
        op.f("ix_actions_due"),
        "actions",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )

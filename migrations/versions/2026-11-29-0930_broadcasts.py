"""broadcasts: 群发 tasks per member and what each customer got

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("corp_id", sa.String(length=64), nullable=False),
        sa.Column("chat_type", sa.String(length=8), nullable=False),
        sa.Column("audience", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("content", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="sending", nullable=False),
        sa.Column("audience_size", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("horizon_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("poll_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_broadcasts_app_id_apps"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcasts")),
    )
    op.create_index("ix_broadcasts_app_id_id", "broadcasts", ["app_id", "id"], unique=False)
    op.create_table(
        "broadcast_tasks",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("broadcast_id", sa.BigInteger(), nullable=False),
        sa.Column("userid", sa.String(length=128), nullable=False),
        sa.Column("chunk", sa.Integer(), server_default="0", nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.Column("action_id", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("msgid", sa.String(length=128), nullable=True),
        sa.Column("adopted", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("fail_list", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("errcode", sa.Integer(), nullable=True),
        sa.Column("errmsg", sa.Text(), nullable=True),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("results_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "reminders", sa.ARRAY(sa.DateTime(timezone=True)), server_default="{}", nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["action_id"],
            ["actions.id"],
            name=op.f("fk_broadcast_tasks_action_id_actions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["broadcast_id"],
            ["broadcasts.id"],
            name=op.f("fk_broadcast_tasks_broadcast_id_broadcasts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broadcast_tasks")),
        sa.UniqueConstraint(
            "broadcast_id",
            "userid",
            "chunk",
            name=op.f("uq_broadcast_tasks_broadcast_id_userid_chunk"),
        ),
        sa.UniqueConstraint("msgid", name=op.f("uq_broadcast_tasks_msgid")),
    )
    op.create_index(
        op.f("ix_broadcast_tasks_action_id"), "broadcast_tasks", ["action_id"], unique=False
    )
    op.create_table(
        "broadcast_recipients",
        sa.Column("broadcast_id", sa.BigInteger(), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("userid", sa.String(length=128), nullable=False),
        sa.Column("chunk", sa.Integer(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("errcode", sa.Integer(), nullable=True),
        sa.Column("send_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wecom_status", sa.SmallInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["broadcast_id"],
            ["broadcasts.id"],
            name=op.f("fk_broadcast_recipients_broadcast_id_broadcasts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("broadcast_id", "recipient", name=op.f("pk_broadcast_recipients")),
    )
    op.create_index(
        "ix_broadcast_recipients_task",
        "broadcast_recipients",
        ["broadcast_id", "userid", "chunk"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_broadcast_recipients_task", table_name="broadcast_recipients")
    op.drop_table("broadcast_recipients")
    op.drop_index(op.f("ix_broadcast_tasks_action_id"), table_name="broadcast_tasks")
    op.drop_table("broadcast_tasks")
    op.drop_index("ix_broadcasts_app_id_id", table_name="broadcasts")
    op.drop_table("broadcasts")

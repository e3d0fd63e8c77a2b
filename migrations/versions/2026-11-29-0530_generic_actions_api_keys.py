"""generic actions (error code and message, attempts log), API keys, idempotent requests

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 05:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.alter_column("actions", "app_id", nullable=True)
    op.alter_column("actions", "corp_id", nullable=True)
    op.add_column("actions", sa.Column("error_code", sa.String(length=64), nullable=True))
    op.add_column("actions", sa.Column("error_message", sa.Text(), nullable=True))
    op.execute(
        "UPDATE actions SET error_code = CASE WHEN errcode IS NULL THEN 'wecom.unanswered'"
        " ELSE 'wecom.' || errcode END, error_message = errmsg"
        " WHERE errcode IS NOT NULL OR errmsg IS NOT NULL"
    )
    op.drop_column("actions", "errcode")
    op.drop_column("actions", "errmsg")
    op.create_index("ix_actions_kind_id", "actions", ["kind", "id"])
    op.create_index("ix_actions_status_id", "actions", ["status", "id"])
    op.create_index("ix_actions_target_id", "actions", ["target", "id"])

    op.create_table(
        "action_attempts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("action_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["action_id"],
            ["actions.id"],
            name=op.f("fk_action_attempts_action_id_actions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_action_attempts")),
    )
    op.create_index(
        op.f("ix_action_attempts_action_id"), "action_attempts", ["action_id"], unique=False
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "idempotent_requests",
        sa.Column("api_key_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("body_sha256", sa.LargeBinary(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_idempotent_requests_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("api_key_id", "key", name=op.f("pk_idempotent_requests")),
    )
    op.create_index(
        "ix_idempotent_requests_created_at", "idempotent_requests", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_idempotent_requests_created_at", table_name="idempotent_requests")
    op.drop_table("idempotent_requests")
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_action_attempts_action_id"), table_name="action_attempts")
    op.drop_table("action_attempts")
    op.drop_index("ix_actions_target_id", table_name="actions")
    op.drop_index("ix_actions_status_id", table_name="actions")
    op.drop_index("ix_actions_kind_id", table_name="actions")
    op.add_column("actions", sa.Column("errmsg", sa.Text(), nullable=True))
    op.add_column("actions", sa.Column("errcode", sa.Integer(), nullable=True))
    op.drop_column("actions", "error_message")
    op.drop_column("actions", "error_code")

"""channels: 联系我 and 加入群聊 ways wecom-hub made or imported

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

A new table, and indexes on the welcome actions and the group members by corp and channel
state (a channel's numbers), built without blocking the inserts of the action runner and
the processor.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("app_id", sa.Integer(), nullable=False),
        sa.Column("corp_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=30), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("source", sa.String(length=16), server_default="api", nullable=False),
        sa.Column("config_id", sa.String(length=128), nullable=True),
        sa.Column("qr_code", sa.Text(), nullable=True),
        sa.Column("userids", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("party_ids", sa.ARRAY(sa.Integer()), server_default="{}", nullable=False),
        sa.Column("chat_ids", sa.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("skip_verify", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("remark", sa.Text(), server_default="", nullable=False),
        sa.Column("welcome_rule_id", sa.BigInteger(), nullable=True),
        sa.Column("welcome_rule_owned", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("tag_rule_id", sa.BigInteger(), nullable=True),
        sa.Column("request_key", sa.String(length=64), nullable=True),
        sa.Column("qr_png", sa.LargeBinary(), nullable=True),
        sa.Column("qr_fetched_at", sa.DateTime(timezone=True), nullable=True),
        _now("created_at"),
        _now("updated_at"),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name=op.f("fk_channels_app_id_apps"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["welcome_rule_id"],
            ["rules.id"],
            name=op.f("fk_channels_welcome_rule_id_rules"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tag_rule_id"],
            ["rules.id"],
            name=op.f("fk_channels_tag_rule_id_rules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint(
            "corp_id", "kind", "config_id", name=op.f("uq_channels_corp_id_kind_config_id")
        ),
        sa.UniqueConstraint("request_key", name=op.f("uq_channels_request_key")),
    )
    op.create_index(
        "uq_channels_corp_id_state",
        "channels",
        ["corp_id", "state"],
        unique=True,
        postgresql_where=sa.text("state IS NOT NULL"),
    )
    op.create_index("ix_channels_app_id_id", "channels", ["app_id", "id"])
    op.create_index("ix_channels_kind_id", "channels", ["kind", "id"])
    with op.get_context().autocommit_block():
        # A build interrupted before leaves an invalid index of that name: start over.
        op.drop_index(
            "ix_actions_welcome_state",
            table_name="actions",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_actions_welcome_state",
            "actions",
            ["corp_id", sa.text("(payload ->> 'state')"), "created_at"],
            postgresql_include=["status"],
            postgresql_where=sa.text("kind = 'welcome'"),
            postgresql_concurrently=True,
        )
        op.drop_index(
            "ix_group_members_state",
            table_name="group_members",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_group_members_state",
            "group_members",
            ["corp_id", "state"],
            postgresql_where=sa.text("state IS NOT NULL"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_group_members_state", table_name="group_members")
    op.drop_index("ix_actions_welcome_state", table_name="actions")
    op.drop_table("channels")

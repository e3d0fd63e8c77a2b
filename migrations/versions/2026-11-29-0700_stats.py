"""statistics: customer and group counters per hour, counted from the events so far; an
index on welcome actions

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 07:00:00

From now on the processor keeps the counters as it projects each event. The events it
processed before are counted here, with the same rules (app/processing/projection.py, as of
this revision). An event an older replica processes while this runs (a rolling deploy) is
counted by neither, as if it had arrived before wecom-hub counted anything.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A deletion counts under the channel of the add that brought that customer to that member:
# the latest add (or half add) of the same corp, member and customer at or before it. In one
# pass rather than a lookup per deletion: numbering each (corp, member, customer)'s events by
# the adds so far, an event's add is the first event of its number (at an equal time, adds
# sort first, as "at or before" says; none yet: number 0).
COUNT_CUSTOMERS = """
INSERT INTO customer_stats (hour, corp_id, userid, state, added, churned, deleted_by_member,
                            churned_7d)
SELECT date_trunc('hour', at, 'UTC'), corp_id, userid, state,
       count(*) FILTER (WHERE type = 'add_external_contact'),
       count(*) FILTER (WHERE type = 'del_follow_user'),
       count(*) FILTER (WHERE type = 'del_external_contact'),
       count(*) FILTER (WHERE type = 'del_follow_user' AND at - added_at < interval '7 days')
FROM (
    SELECT type, status, source, corp_id, userid, at,
           CASE WHEN adds > 0 THEN coalesce(first_value(state) OVER brought, '') ELSE '' END
               AS state,
           CASE WHEN adds > 0 THEN first_value(at) OVER brought END AS added_at
    FROM (
        SELECT e.id, e.type, e.status, e.payload ->> 'Source' AS source, a.corp_id,
               e.payload ->> 'UserID' AS userid, e.payload ->> 'ExternalUserID' AS customer,
               e.payload ->> 'State' AS state, coalesce(e.create_time, e.received_at) AS at,
               e.type LIKE 'add%' AS is_add,
               count(*) FILTER (WHERE e.type LIKE 'add%') OVER (
                   PARTITION BY a.corp_id, e.payload ->> 'UserID', e.payload ->> 'ExternalUserID'
                   ORDER BY coalesce(e.create_time, e.received_at), e.type LIKE 'add%' DESC, e.id
               ) AS adds
        FROM events e
        JOIN apps a ON a.id = e.app_id
        WHERE e.family = 'change_external_contact'
          AND e.type IN ('add_external_contact', 'add_half_external_contact', 'del_follow_user',
                         'del_external_contact')
    ) AS numbered
    WINDOW brought AS (PARTITION BY corp_id, userid, customer, adds ORDER BY at, is_add DESC, id)
) AS attributed
WHERE status = 'processed'
  AND (type IN ('add_external_contact', 'del_follow_user')
       OR (type = 'del_external_contact' AND coalesce(source, '') <> 'DELETE_BY_TRANSFER'))
GROUP BY 1, 2, 3, 4
"""

# MemChangeCnt, or else the members listed (<Item> children: an array, or one string).
COUNT_GROUPS = """
INSERT INTO group_stats (hour, corp_id, chat_id, change, scene, members)
SELECT date_trunc('hour', coalesce(e.create_time, e.received_at), 'UTC'), a.corp_id,
       e.payload ->> 'ChatId', change.name,
       coalesce(nullif(e.payload ->> change.scene_field, '')::int, -1),
       sum(coalesce(
           nullif(e.payload ->> 'MemChangeCnt', '')::int,
           CASE jsonb_typeof(e.payload -> 'MemChangeList' -> 'Item')
               WHEN 'array' THEN jsonb_array_length(e.payload -> 'MemChangeList' -> 'Item')
               WHEN 'string' THEN 1
               ELSE 0
           END))
FROM events e
JOIN apps a ON a.id = e.app_id
JOIN (VALUES ('add_member', 'join', 'JoinScene'), ('del_member', 'quit', 'QuitScene'))
    AS change (detail, name, scene_field) ON change.detail = e.payload ->> 'UpdateDetail'
WHERE e.status = 'processed' AND e.family = 'change_external_chat' AND e.type = 'update'
GROUP BY 1, 2, 3, 4, 5
"""


def upgrade() -> None:
    op.create_table(
        "customer_stats",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("corp_id", sa.String(length=64), nullable=False),
        sa.Column("userid", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("added", sa.Integer(), server_default="0", nullable=False),
        sa.Column("churned", sa.Integer(), server_default="0", nullable=False),
        sa.Column("deleted_by_member", sa.Integer(), server_default="0", nullable=False),
        sa.Column("churned_7d", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("hour", "corp_id", "userid", "state", name="pk_customer_stats"),
    )
    op.create_table(
        "group_stats",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("corp_id", sa.String(length=64), nullable=False),
        sa.Column("chat_id", sa.String(length=128), nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("scene", sa.Integer(), nullable=False),
        sa.Column("members", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "corp_id", "chat_id", "change", "scene", name="pk_group_stats"
        ),
    )
    op.execute(COUNT_CUSTOMERS)
    op.execute(COUNT_GROUPS)
    # The action runner updates actions all the time: built without blocking it (outside a
    # transaction; the advisory lock in migrations/env.py still keeps replicas apart).
    with op.get_context().autocommit_block():
        # A build interrupted before leaves an invalid index of that name: start over.
        op.drop_index(
            "ix_actions_welcome",
            table_name="actions",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            "ix_actions_welcome",
            "actions",
            ["created_at"],
            postgresql_include=[
                "corp_id",
                "status",
                "finished_at",
                "deadline",
                "reason",
                "error_code",
            ],
            postgresql_where=sa.text("kind = 'welcome'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    op.drop_index("ix_actions_welcome", table_name="actions")
    op.drop_table("group_stats")
    op.drop_table("customer_stats")

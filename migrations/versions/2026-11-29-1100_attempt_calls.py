"""attempt calls: how many HTTP requests each action attempt sent to WeCom, and the total
per action

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29 11:00:00

An attempt is one pass of the action runner; within it the WeCom client retries -1, 45009
and timeouts on its own (a welcome, 30 ms apart until its deadline), so one attempt could
hide dozens of requests. action_attempts.wecom_calls counts them per attempt,
actions.wecom_calls sums them over the attempts log (app/actions/runner.py `_RELEASE`).

Attempts logged before this revision show 0: their requests were not counted. A NOT NULL
column with a constant default is added without rewriting the table (Postgres 11+).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in ("action_attempts", "actions"):
        op.add_column(
            table, sa.Column("wecom_calls", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for table in ("actions", "action_attempts"):
        op.drop_column(table, "wecom_calls")

"""claims keep the status: a claimed action stays pending, held by its lease

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29 19:00:00

The action runner's claim used to set status = 'running'. status is in four of the table's
indexes, so each claim wrote a new entry into every index; a claim that leaves every indexed
column alone is a HOT update, in place (ADR 0008, fifth round). Running is now a pending
action that a runner holds (locked_by), as app/actions/kinds.py status_sql shows it. Actions
running while this migrates are stored as pending, their leases kept: they show as running,
and their runners record the outcome as before.

The check refuses 'running' from here on. A runner of the previous version would still claim
pending actions without looking at their lease, and take over those a new runner holds; its
claim, which writes 'running', is refused instead, and it runs nothing until it is replaced
(it logs "action runner paused" meanwhile, and work cut off at its shutdown waits for its
lease to end instead of being given back). The check is added NOT VALID first: from that
commit on no 'running' can be written, so the rows converted after it are all there are,
and the validation, which reads the whole table, runs after it without blocking writers.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_check_constraint(
        "status_not_running", "actions", "status <> 'running'", postgresql_not_valid=True
    )
    op.execute("UPDATE actions SET status = 'pending' WHERE status = 'running'")
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE actions VALIDATE CONSTRAINT ck_actions_status_not_running")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("status_not_running", "actions", type_="check")
    op.execute(
        "UPDATE actions SET status = 'running' WHERE status = 'pending' AND locked_by IS NOT NULL"
    )

"""rules: every change to a rule is announced (NOTIFY wecom_hub_rules), so processors drop
their cached rules at once

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29 10:30:00

A channel made over the API (with its welcome and tag rules) and scanned a second later
must be welcomed by them; the processor's rule cache (app/automations/store.py RuleCache)
kept rules for 5 s. A statement-level trigger announces every change, whatever made it (the
API, the CLI, a channel, an app removed with --force, an operator's SQL); the notification
is delivered when the changing transaction commits, and not at all if it rolls back.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION wecom_hub_rules_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('wecom_hub_rules', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rules"
        " FOR EACH STATEMENT EXECUTE FUNCTION wecom_hub_rules_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER rules_changed ON rules")
    op.execute("DROP FUNCTION wecom_hub_rules_changed()")

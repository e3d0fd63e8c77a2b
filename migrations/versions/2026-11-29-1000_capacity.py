"""capacity: when a mark_tag action last set a follow's tags; events.xml no longer written
(ADR 0008)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 10:00:00

- follows.tags_marked_at: an enrichment whose WeCom answer is older than a mark_tag that
  finished meanwhile keeps the marked tags (a faster enrichment made that race common).
- events.xml becomes nullable: a callback stores the body as received and the parsed
  fields; the decrypted XML, a third copy of the same content, is no longer written.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column("follows", sa.Column("tags_marked_at", sa.DateTime(timezone=True)))
    op.alter_column("events", "xml", nullable=True)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("UPDATE events SET xml = '' WHERE xml IS NULL")
    op.alter_column("events", "xml", nullable=False)
    op.drop_column("follows", "tags_marked_at")

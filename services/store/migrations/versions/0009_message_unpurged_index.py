"""message: a partial index on the rows purge has not shredded yet

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 06:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_UNPURGED = sa.text("purged_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_message_unpurged",
        "message",
        ["state", "received_at"],
        unique=False,
        sqlite_where=_UNPURGED,
        postgresql_where=_UNPURGED,
    )


def downgrade() -> None:
    op.drop_index("ix_message_unpurged", table_name="message")

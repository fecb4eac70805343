"""reply_ledger: pseudonym of the sender's domain on unauthenticated replies (the per-domain daily cap)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:30:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reply_ledger") as batch:
        batch.add_column(sa.Column("domain_pseudonym", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch.create_index("ix_reply_ledger_domain_time", ["domain_pseudonym", "granted_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reply_ledger") as batch:
        batch.drop_index("ix_reply_ledger_domain_time")
        batch.drop_column("domain_pseudonym")

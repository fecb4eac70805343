"""decision: which layer decided (path), the model's confidence and its top scores

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:00:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decision") as batch:
        batch.add_column(
            sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default="rule")
        )
        batch.add_column(
            sa.Column("confidence", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False, server_default="high")
        )
        batch.add_column(sa.Column("scores", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decision") as batch:
        batch.drop_column("scores")
        batch.drop_column("confidence")
        batch.drop_column("path")

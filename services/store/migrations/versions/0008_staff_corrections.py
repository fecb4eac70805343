"""staff_correction: categories staff gave misrouted originals through the feedback link

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 03:30:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff_correction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("decided_category", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("corrected_category", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("rule_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("ruleset_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("corrected_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["decision.message_id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_staff_correction_corrected_at", "staff_correction", ["corrected_at"], unique=False)
    op.create_index(
        "ix_staff_correction_message_time", "staff_correction", ["message_id", "corrected_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_staff_correction_message_time", table_name="staff_correction")
    op.drop_index("ix_staff_correction_corrected_at", table_name="staff_correction")
    op.drop_table("staff_correction")

"""rule-set history: every activated rule set with its files, contents deduplicated by hash

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 03:30:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ruleset_blob",
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "ruleset_version",
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("activated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("activated_by", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("previous_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("model_checked", sa.Boolean(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("changed", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_index("ix_ruleset_version_activated_at", "ruleset_version", ["activated_at"], unique=False)
    op.create_table(
        "ruleset_file",
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["sha256"], ["ruleset_blob.sha256"]),
        sa.ForeignKeyConstraint(["version"], ["ruleset_version.version"]),
        sa.PrimaryKeyConstraint("version", "path"),
    )
    op.create_index("ix_ruleset_file_sha256", "ruleset_file", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ruleset_file_sha256", table_name="ruleset_file")
    op.drop_table("ruleset_file")
    op.drop_index("ix_ruleset_version_activated_at", table_name="ruleset_version")
    op.drop_table("ruleset_version")
    op.drop_table("ruleset_blob")

"""message_key: a data key per message; raw bodies and envelope senders sealed with it (crypto-shredding)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:30:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

from services.store.sealing import new_key, seal, seal_text, unseal, unseal_text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BATCH = 500
_message = sa.table(
    "message",
    sa.column("id", sa.String),
    sa.column("raw", sa.LargeBinary),
    sa.column("mail_from", sa.String),
    sa.column("purged_at", sa.DateTime),
)
_key = sa.table("message_key", sa.column("message_id", sa.String), sa.column("data_key", sa.LargeBinary))
_reply = sa.table("reply", sa.column("message_id", sa.String), sa.column("in_reply_to"), sa.column("references"))


def upgrade() -> None:
    op.create_table(
        "message_key",
        sa.Column("message_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("data_key", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    # a sealed sender is base64 of sender + 28 bytes
    with op.batch_alter_table("message") as batch:
        batch.alter_column(
            "mail_from",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=512),
            type_=sqlmodel.sql.sqltypes.AutoString(length=1024),
            existing_nullable=False,
        )
    connection = op.get_bind()
    after = ""
    while True:
        rows = connection.execute(
            sa.select(_message.c.id, _message.c.raw, _message.c.mail_from)
            .where(_message.c.id > after, _message.c.purged_at.is_(None))
            .order_by(_message.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        for message_id, raw, mail_from in rows:
            key = new_key()
            connection.execute(sa.insert(_key).values(message_id=message_id, data_key=key))
            connection.execute(
                sa.update(_message)
                .where(_message.c.id == message_id)
                .values(
                    raw=None if raw is None else seal(key, raw, f"{message_id}:raw"),
                    mail_from=seal_text(key, mail_from or "", f"{message_id}:mail_from"),
                )
            )
        after = rows[-1][0]
    # threading headers are no longer stored; the purged ones must not stay readable
    connection.execute(
        sa.update(_reply)
        .where(_reply.c.message_id.in_(sa.select(_message.c.id).where(_message.c.purged_at.is_not(None))))
        .values(in_reply_to=None, references=None)
    )


def downgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_message.c.id, _message.c.raw, _message.c.mail_from, _key.c.data_key).join(
            _key, _key.c.message_id == _message.c.id
        )
    ).all()
    for message_id, raw, mail_from, key in rows:
        connection.execute(
            sa.update(_message)
            .where(_message.c.id == message_id)
            .values(
                raw=None if raw is None else unseal(key, raw, f"{message_id}:raw"),
                mail_from=unseal_text(key, mail_from, f"{message_id}:mail_from"),
            )
        )
    op.drop_table("message_key")
    with op.batch_alter_table("message") as batch:
        batch.alter_column(
            "mail_from",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=1024),
            type_=sqlmodel.sql.sqltypes.AutoString(length=512),
            existing_nullable=False,
        )

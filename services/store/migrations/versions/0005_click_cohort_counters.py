"""counter: book the clicks recorded so far to their reply cohorts (reply-clicked, link-opened)

Until now a click was only counted in the hour it happened; the click-through is now the share of the
replies sent in a period whose link was opened (docs/metrics.md), counted in the hour the mail arrived
(services/store/cohort.py). This books the `link_click` rows already stored the same way, so earlier
replies keep their clicks and a later first click on another of their links is not counted twice.

Revision ID: 0005
Revises: 0004 (to be chained after 0004 when merged)
Create Date: 2026-12-01 23:55:00
"""

from collections import Counter
from datetime import datetime

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OUTCOMES = ("reply-clicked", "link-opened")
_text = sqlmodel.sql.sqltypes.AutoString
_time = sqlmodel.sql.sqltypes.UTCDateTime
link_click = sa.table("link_click", sa.column("message_id", _text()), sa.column("channel", _text()))
reply = sa.table("reply", sa.column("message_id", _text()), sa.column("state", _text()))
message = sa.table(
    "message", sa.column("id", _text()), sa.column("received_at", _time()), sa.column("mailbox", _text())
)
decision = sa.table(
    "decision", sa.column("message_id", _text()), sa.column("category", _text()), sa.column("channel", _text())
)
counter = sa.table(
    "counter",
    sa.column("hour", _time()),
    sa.column("mailbox", _text()),
    sa.column("category", _text()),
    sa.column("channel", _text()),
    sa.column("outcome", _text()),
    sa.column("count", sa.Integer()),
)
dirty = sa.table("counter_dirty_hour", sa.column("hour", _time()), sa.column("version", sa.Integer()))
KEYS = ["hour", "mailbox", "category", "channel", "outcome"]


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(
            link_click.c.message_id,
            link_click.c.channel,
            message.c.received_at,
            message.c.mailbox,
            decision.c.category,
            decision.c.channel,
        )
        .select_from(link_click)
        .join(reply, reply.c.message_id == link_click.c.message_id)
        .join(message, message.c.id == link_click.c.message_id)
        .join(decision, decision.c.message_id == link_click.c.message_id)
        .where(reply.c.state == "sent")
    ).all()
    bumps: Counter[tuple[datetime, str, str, str, str]] = Counter()
    clicked: set[str] = set()
    for message_id, link_channel, received_at, mailbox, category, reply_channel in rows:
        hour = received_at.replace(minute=0, second=0, microsecond=0)
        bumps[(hour, mailbox, category, link_channel, "link-opened")] += 1
        if message_id not in clicked:
            clicked.add(message_id)
            bumps[(hour, mailbox, category, reply_channel, "reply-clicked")] += 1
    if not bumps:
        return
    module = postgresql if bind.dialect.name == "postgresql" else sqlite
    insert = module.insert(counter)
    bind.execute(
        insert.on_conflict_do_update(index_elements=KEYS, set_={"count": counter.c.count + insert.excluded.count}),
        [{**dict(zip(KEYS, key, strict=True)), "count": n} for key, n in sorted(bumps.items())],
    )
    _mark_dirty(bind, {key[0] for key in bumps})


def _mark_dirty(bind: sa.Connection, hours: set[datetime]) -> None:
    # the daily rollup rebuilds these hours' days (services/store/rollup.py)
    module = postgresql if bind.dialect.name == "postgresql" else sqlite
    mark = module.insert(dirty)
    bind.execute(
        mark.on_conflict_do_update(index_elements=["hour"], set_={"version": dirty.c.version + 1}),
        [{"hour": hour, "version": 1} for hour in sorted(hours)],
    )


def downgrade() -> None:
    bind = op.get_bind()
    hours = set(bind.execute(sa.select(counter.c.hour).where(counter.c.outcome.in_(OUTCOMES))).scalars())
    bind.execute(counter.delete().where(counter.c.outcome.in_(OUTCOMES)))
    if hours:
        _mark_dirty(bind, hours)

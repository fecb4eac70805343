"""Database operations of the pipeline; each function is one transaction (called from a worker thread)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, event, func, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session as ORMSession
from sqlmodel import Session, SQLModel, col, select

from services.store.db import session_scope
from services.store.models import (
    Counter,
    CounterDirtyHour,
    Decision,
    Delivery,
    JobState,
    Message,
    MessageState,
    Reply,
    ReplyLedger,
    utcnow,
)
from services.store.writelock import write_lock


def store_messages(engine: Engine, rows: list[dict[str, object]]) -> None:
    """Durably write received messages (message-table column dicts) in one transaction with one executemany.

    Core rather than ORM objects: this runs once per accepted mail and the gateway answers 250 only after it.
    """
    with write_lock(engine), engine.begin() as connection:
        connection.execute(insert(Message.__table__), rows)  # type: ignore[attr-defined]


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


_COUNTER_BUMPS = "channelshift.counter_bumps"
_COUNTER_KEYS = ("hour", "mailbox", "category", "channel", "outcome")


def bump_counter(
    session: Session, *, hour: datetime, mailbox: str, category: str, channel: str, outcome: str, amount: int = 1
) -> None:
    """Count in the hourly rollup within the caller's transaction.

    Bumps are summed per row in the session and written together just before it commits (one upsert
    statement for the whole transaction, rows in key order so concurrent writers lock them alike).
    """
    bumps: collections.Counter[tuple[datetime, str, str, str, str]] = session.info.setdefault(
        _COUNTER_BUMPS, collections.Counter()
    )
    bumps[(hour_of(hour), mailbox, category, channel, outcome[:80])] += amount


@event.listens_for(ORMSession, "before_commit")
def _write_counter_bumps(session: ORMSession) -> None:
    bumps = session.info.pop(_COUNTER_BUMPS, None)
    if not bumps:
        return
    table = Counter.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    statement = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    upsert = statement.on_conflict_do_update(
        index_elements=list(_COUNTER_KEYS), set_={"count": table.c.count + statement.excluded.count}
    )
    rows = [{**dict(zip(_COUNTER_KEYS, key, strict=True)), "count": amount} for key, amount in sorted(bumps.items())]
    session.execute(upsert, rows)
    # the daily rollup rebuilds the days of these hours (services/store/rollup.py)
    dirty = CounterDirtyHour.__table__  # type: ignore[attr-defined]
    mark = postgresql.insert(dirty) if dialect == "postgresql" else sqlite.insert(dirty)
    session.execute(
        mark.on_conflict_do_update(index_elements=["hour"], set_={"version": dirty.c.version + 1}),
        [{"hour": hour, "version": 1} for hour in sorted({key[0] for key in bumps})],
    )


@event.listens_for(ORMSession, "after_rollback")
def _drop_counter_bumps(session: ORMSession) -> None:
    session.info.pop(_COUNTER_BUMPS, None)


def begin_decision(session: Session, message_id: str, pseudonym: str | None, new_state: str) -> bool:
    """Claim a message for deciding (moving it to `new_state`) and serialise decisions per sender.

    False if someone else decided it. The guarded UPDATE is the transaction's first statement, so SQLite
    takes its write lock before the reply ledger is read; PostgreSQL additionally takes a transaction-scoped
    advisory lock per sender.
    """
    table = Message.__table__  # type: ignore[attr-defined]
    result = session.execute(
        update(table)
        .where(table.c.id == message_id, table.c.state == MessageState.RECEIVED)
        .values(state=new_state, updated_at=utcnow())
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    if pseudonym and session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(bytes.fromhex(pseudonym[:16]), "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(key)))
    return True


def insert_rows(session: Session, *rows: SQLModel) -> None:
    """INSERT table-model objects with Core (no unit of work: they are returned to callers, not tracked).

    A plain insert(table) with parameters compiles once and is reused from SQLAlchemy's cache.
    """
    for row in rows:
        table = row.__table__  # type: ignore[attr-defined]
        values = {column.name: getattr(row, column.name) for column in table.columns}
        if values.get("id", 0) is None:
            del values["id"]  # autoincrement
        session.execute(insert(table), [values])


def bump_message_counter(session: Session, message: Message, decision: Decision, outcome: str) -> None:
    """Count an outcome in the hour the message arrived, under its mailbox, category and channel."""
    bump_counter(
        session,
        hour=message.received_at,
        mailbox=message.mailbox,
        category=decision.category,
        channel=decision.channel,
        outcome=outcome,
    )


def reply_allowance(
    session: Session, pseudonym: str, template: str, now: datetime, window: timedelta, daily_cap: int
) -> str | None:
    """None if a reply may go out, else the suppression reason (window per template, daily cap per sender)."""
    day_ago = now - timedelta(days=1)
    same_template = (col(ReplyLedger.template) == template) & (col(ReplyLedger.granted_at) > now - window)
    recent_same, today = session.execute(
        select(
            func.coalesce(func.sum(case((same_template, 1), else_=0)), 0),
            func.coalesce(func.sum(case((col(ReplyLedger.granted_at) > day_ago, 1), else_=0)), 0),
        ).where(
            col(ReplyLedger.sender_pseudonym) == pseudonym,
            col(ReplyLedger.granted_at) > min(now - window, day_ago),
        )
    ).one()
    if recent_same:
        return "already-replied"
    if today >= daily_cap:
        return "daily-cap"
    return None


def mark_repeat_contact(session: Session, pseudonym: str, now: datetime) -> None:
    """This sender writes again: mark their earlier steering replies (7 / 30 days) as followed by e-mail, once."""
    earlier = session.exec(
        select(ReplyLedger).where(
            ReplyLedger.sender_pseudonym == pseudonym,
            ReplyLedger.granted_at > now - timedelta(days=30),
            ReplyLedger.granted_at < now,
            col(ReplyLedger.repeat_30d).is_(False),
        )
    ).all()
    for entry in earlier:
        windows = ["30d"] + (["7d"] if entry.granted_at > now - timedelta(days=7) else [])
        for window in windows:
            bump_counter(
                session,
                hour=entry.received_at,
                mailbox=entry.mailbox,
                category=entry.category,
                channel=entry.channel,
                outcome=f"repeat-{window}",
            )
        entry.repeat_30d = True
        entry.repeat_7d = "7d" in windows
        session.add(entry)


def claim(session: Session, model: type[Reply] | type[Delivery], message_id: str, stale_after: timedelta) -> bool:
    """Move a reply/delivery to SENDING if nobody else holds it; exactly one worker wins (caller's transaction)."""
    now = utcnow()
    table = model.__table__  # type: ignore[union-attr]
    stale = table.c.claimed_at < now - stale_after
    claimable = [table.c.state == JobState.PENDING, (table.c.state == JobState.SENDING) & stale]
    if model is Delivery:
        # at least once for originals: an interrupted transmission is repeated
        claimable.append((table.c.state == JobState.TRANSMITTING) & stale)
    result = session.execute(
        update(table)
        .where(table.c.message_id == message_id)
        .where(or_(*claimable))
        .values(state=JobState.SENDING, claimed_at=now, attempts=table.c.attempts + 1)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


@dataclass(frozen=True)
class StuckWork:
    received: list[str]
    replies: list[str]
    deliveries: list[str]


def mark_transmitting(session: Session, model: type[Reply] | type[Delivery], message_id: str) -> None:
    table = model.__table__  # type: ignore[union-attr]
    session.execute(
        update(table)
        .where(table.c.message_id == message_id, table.c.state == JobState.SENDING)
        .values(state=JobState.TRANSMITTING, claimed_at=utcnow())
    )


def settle_uncertain_replies(engine: Engine, stale_after: timedelta) -> int:
    """Replies whose transmission was cut off by a crash: never resend, record them as uncertain."""
    now = utcnow()
    with session_scope(engine) as session:
        rows = session.exec(
            select(Reply, Message, Decision)
            .where(col(Reply.message_id) == col(Message.id), col(Decision.message_id) == col(Message.id))
            .where(col(Reply.state) == JobState.TRANSMITTING, col(Reply.claimed_at) < now - stale_after)
            .limit(1000)
        ).all()
        for reply, message, decision in rows:
            reply.state = JobState.UNCERTAIN
            reply.error = "worker stopped during transmission; not resent to avoid a duplicate"
            session.add(reply)
            bump_message_counter(session, message, decision, "reply-uncertain")
        return len(rows)


def find_stuck(engine: Engine, older_than: timedelta, stale_sending: timedelta, limit: int = 1000) -> StuckWork:
    now = utcnow()
    with Session(engine) as session:
        received = session.exec(
            select(Message.id)
            .where(Message.state == MessageState.RECEIVED, Message.received_at < now - older_than)
            .order_by(col(Message.received_at))
            .limit(limit)
        ).all()
        replies = session.exec(
            select(Reply.message_id)
            .where(
                or_(
                    (col(Reply.state) == JobState.PENDING) & (col(Reply.created_at) < now - older_than),
                    (col(Reply.state) == JobState.SENDING) & (col(Reply.claimed_at) < now - stale_sending),
                )
            )
            .limit(limit)
        ).all()
        deliveries = session.exec(
            select(Delivery.message_id)
            .where(
                or_(
                    (col(Delivery.state) == JobState.PENDING) & (col(Delivery.created_at) < now - older_than),
                    col(Delivery.state).in_([JobState.SENDING, JobState.TRANSMITTING])
                    & (col(Delivery.claimed_at) < now - stale_sending),
                )
            )
            .limit(limit)
        ).all()
    return StuckWork(list(received), list(replies), list(deliveries))

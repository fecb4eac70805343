"""Database operations of the pipeline; each function is one transaction (called from a worker thread).

The per-mail statements are built once at import with bind parameters. Building a statement anew costs more
than executing it (construction plus SQLAlchemy's cache-key walk: 390 against 100 microseconds for one
UPDATE on the bench machine), and the worker runs about a dozen per mail.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Engine, Table, bindparam, case, func, or_, select, update
from sqlmodel import Session, SQLModel, col
from sqlmodel import select as model_select

from services.domain import REPEAT_PREFIX, Outcome, Verdict
from services.privacy import mask_addresses
from services.store.db import session_scope
from services.store.models import (
    Decision,
    Delivery,
    JobState,
    Message,
    MessageKey,
    MessageState,
    Reply,
    ReplyLedger,
    utcnow,
)
from services.store.records import SendRecord
from services.store.uow import Counts, UnitOfWork, insert_into
from services.store.vault import open_message, seal_message_rows
from services.store.writelock import write_lock

_MESSAGES: Table = Message.__table__  # type: ignore[attr-defined]
_KEYS: Table = MessageKey.__table__  # type: ignore[attr-defined]
_LEDGER: Table = ReplyLedger.__table__  # type: ignore[attr-defined]
_DECISIONS: Table = Decision.__table__  # type: ignore[attr-defined]


def store_messages(engine: Engine, rows: list[dict[str, object]], counts: Counts | None = None) -> None:
    """Durably write received messages (message-table column dicts) in one transaction with one executemany.

    Core rather than ORM objects: this runs once per accepted mail and the gateway answers 250 only after it.
    `counts` (the gateway's refused recipients) go into the same transaction.
    """
    sealed, keys = seal_message_rows(rows)
    with write_lock(engine), engine.begin() as connection:
        if rows:
            connection.execute(insert_into(_KEYS), keys)
            connection.execute(insert_into(_MESSAGES), sealed)
        if counts:
            counts.write(connection)


def begin_decision(session: Session, message_id: str, pseudonym: str | None, new_state: str) -> bool:
    """Claim a message for deciding (moving it to `new_state`) and serialise decisions per sender.

    False if someone else decided it. The guarded UPDATE is the transaction's first statement, so SQLite
    takes its write lock before the reply ledger is read; PostgreSQL additionally takes a transaction-scoped
    advisory lock per sender.
    """
    result = session.execute(_BEGIN_DECISION, {"target_id": message_id, "new_state": new_state, "now": utcnow()})
    if getattr(result, "rowcount", 0) != 1:
        return False
    if pseudonym and session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(bytes.fromhex(pseudonym[:16]), "big", signed=True)
        session.execute(_SENDER_LOCK, {"key": key})
    return True


_BEGIN_DECISION = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("target_id"), _MESSAGES.c.state == MessageState.RECEIVED)
    .values(state=bindparam("new_state"), updated_at=bindparam("now"))
)
_SENDER_LOCK = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))
_MESSAGE_BY_ID = (
    select(_MESSAGES, _KEYS.c.data_key)
    .outerjoin(_KEYS, _KEYS.c.message_id == _MESSAGES.c.id)
    .where(_MESSAGES.c.id == bindparam("target_id"))
)


def load_message(session: Session, message_id: str) -> Message | None:
    """One message, opened (raw and sender in clear), as a detached object read with a prebuilt Core SELECT."""
    row = session.execute(_MESSAGE_BY_ID, {"target_id": message_id}).one_or_none()
    return None if row is None else open_message(row._mapping)


def opened_messages(session: Session, *conditions: Any, limit: int | None = None) -> list[Message]:
    """Messages matching `conditions` (on the message table), opened, oldest first."""
    query = select(_MESSAGES, _KEYS.c.data_key).outerjoin(_KEYS, _KEYS.c.message_id == _MESSAGES.c.id)
    query = query.where(*conditions).order_by(_MESSAGES.c.received_at, _MESSAGES.c.id).limit(limit)
    rows = session.execute(query)
    return [open_message(row._mapping) for row in rows]


def load_decision(session: Session, message_id: str) -> Verdict | None:
    row = session.execute(_DECISION_BY_ID, {"target_id": message_id}).one_or_none()
    return None if row is None else Verdict.of_row(row._mapping)


def load_send(session: Session, model: type[Reply] | type[Delivery], message_id: str) -> SendRecord | None:
    row = session.execute(_send_by_id(model), {"target_id": message_id}).one_or_none()
    return None if row is None else SendRecord.of(model, row._mapping)


_DECISION_BY_ID = select(_DECISIONS).where(_DECISIONS.c.message_id == bindparam("target_id"))


@functools.cache
def _send_by_id(model: type[Reply] | type[Delivery]) -> Any:
    table = model.__table__  # type: ignore[union-attr]
    return select(table).where(table.c.message_id == bindparam("target_id"))


def insert_now(session: Session, model: type[SQLModel], values: dict[str, object]) -> None:
    """INSERT one row of a table model from plain values (every column given, or the table's defaults apply)."""
    session.execute(insert_into(model.__table__), [values])  # type: ignore[attr-defined]


def bump_message_counter(uow: UnitOfWork, message: Message, decision: Decision | Verdict, outcome: str) -> None:
    """Count an outcome in the hour the message arrived, under its mailbox, category and channel."""
    uow.count(
        hour=message.received_at,
        mailbox=message.mailbox,
        category=decision.category,
        channel=decision.channel,
        outcome=outcome,
    )


def reply_allowance(
    session: Session,
    pseudonym: str,
    template: str,
    now: datetime,
    window: timedelta,
    daily_cap: int,
    domain_pseudonym: str | None = None,
    domain_daily_cap: int = 0,
) -> str | None:
    """None if a reply may go out, else the suppression reason.

    The window is per template, the daily cap per sender; `pseudonym` is of the folded address (case and
    plus-addressing, services/reply/policy.py), so `a+1@x` and `A+2@x` share both. An unauthenticated reply
    (`domain_pseudonym` given) also counts against its domain's daily cap: 300 forged senders at one domain
    put at most that many replies into the domain's mailboxes.
    """
    day_ago = now - timedelta(days=1)
    recent_same, today = session.execute(
        _ALLOWANCE,
        {
            "pseudonym": pseudonym,
            "template": template,
            "window_start": now - window,
            "day_ago": day_ago,
            "since": min(now - window, day_ago),
        },
    ).one()
    if recent_same:
        return "already-replied"
    if today >= daily_cap:
        return "daily-cap"
    if domain_pseudonym is not None:
        domain_today = session.execute(_DOMAIN_TODAY, {"domain": domain_pseudonym, "day_ago": day_ago}).scalar_one()
        if domain_today >= domain_daily_cap:
            return "domain-daily-cap"
    return None


_SAME_TEMPLATE = (_LEDGER.c.template == bindparam("template")) & (_LEDGER.c.granted_at > bindparam("window_start"))
_ALLOWANCE = select(
    func.coalesce(func.sum(case((_SAME_TEMPLATE, 1), else_=0)), 0),
    func.coalesce(func.sum(case((_LEDGER.c.granted_at > bindparam("day_ago"), 1), else_=0)), 0),
).where(_LEDGER.c.sender_pseudonym == bindparam("pseudonym"), _LEDGER.c.granted_at > bindparam("since"))
_DOMAIN_TODAY = select(func.count()).where(
    _LEDGER.c.domain_pseudonym == bindparam("domain"), _LEDGER.c.granted_at > bindparam("day_ago")
)


def mark_repeat_contact(uow: UnitOfWork, pseudonym: str, now: datetime) -> None:
    """This sender writes again: mark their earlier steering replies (7 / 30 days) as followed by e-mail, once."""
    earlier = uow.session.execute(
        _UNMARKED_REPLIES, {"pseudonym": pseudonym, "since": now - timedelta(days=30), "now": now}
    ).all()
    for entry in earlier:
        windows = ["30d"] + (["7d"] if entry.granted_at > now - timedelta(days=7) else [])
        for window in windows:
            uow.count(
                hour=entry.received_at,
                mailbox=entry.mailbox,
                category=entry.category,
                channel=entry.channel,
                outcome=REPEAT_PREFIX + window,
            )
        uow.session.execute(_MARK_REPEAT, {"entry_id": entry.id, "within_7d": "7d" in windows})


_UNMARKED_REPLIES = select(
    _LEDGER.c.id, _LEDGER.c.granted_at, _LEDGER.c.received_at, _LEDGER.c.mailbox, _LEDGER.c.category, _LEDGER.c.channel
).where(
    _LEDGER.c.sender_pseudonym == bindparam("pseudonym"),
    _LEDGER.c.granted_at > bindparam("since"),
    _LEDGER.c.granted_at < bindparam("now"),
    _LEDGER.c.repeat_30d.is_(False),
)
_MARK_REPEAT = (
    update(_LEDGER)
    .where(_LEDGER.c.id == bindparam("entry_id"))
    .values(repeat_30d=True, repeat_7d=bindparam("within_7d"))
)


def claim(session: Session, model: type[Reply] | type[Delivery], message_id: str, stale_after: timedelta) -> bool:
    """Move a reply/delivery to SENDING if nobody else holds it; exactly one worker wins (caller's transaction)."""
    now = utcnow()
    result = session.execute(
        _claim_statement(model), {"target_id": message_id, "stale_before": now - stale_after, "now": now}
    )
    return bool(getattr(result, "rowcount", 0) == 1)


@functools.cache
def _claim_statement(model: type[Reply] | type[Delivery]) -> Any:
    table = model.__table__  # type: ignore[union-attr]
    stale = table.c.claimed_at < bindparam("stale_before")
    claimable = [table.c.state == JobState.PENDING, (table.c.state == JobState.SENDING) & stale]
    if model is Delivery:
        # at least once for originals: an interrupted transmission is repeated
        claimable.append((table.c.state == JobState.TRANSMITTING) & stale)
    return (
        update(table)
        .where(table.c.message_id == bindparam("target_id"))
        .where(or_(*claimable))
        .values(state=JobState.SENDING, claimed_at=bindparam("now"), attempts=table.c.attempts + 1)
    )


def held_for(
    session: Session, model: type[Reply] | type[Delivery], message_id: str, stale_after: timedelta
) -> float | None:
    """Seconds until another job's claim on this send goes stale (unless renewed); None if it is not claimable.

    None: finished, failed, pending (the claim failed for another reason), or a reply already transmitting,
    which is never taken over.
    """
    table = model.__table__  # type: ignore[union-attr]
    row = session.execute(
        select(table.c.state, table.c.claimed_at).where(table.c.message_id == bindparam("target_id")),
        {"target_id": message_id},
    ).first()
    if row is None or row.claimed_at is None:
        return None
    takeable = [JobState.SENDING] + ([JobState.TRANSMITTING] if model is Delivery else [])
    if row.state not in takeable:
        return None
    claimed_at: datetime = row.claimed_at if row.claimed_at.tzinfo else row.claimed_at.replace(tzinfo=UTC)
    return max((claimed_at + stale_after - utcnow()).total_seconds(), 0.0)


def release_claim(session: Session, record: SendRecord) -> bool:
    """Give back a claim whose transmission never started (a stopped job): pending again, the attempt uncounted.

    Only the claim this worker took (same attempt number) and only while still `sending`: a reply that is
    `transmitting` may have reached the relay and must stay where it is.
    """
    result = session.execute(
        _release_statement(record.model), {"target_id": record.message_id, "claimed_attempt": record.attempts}
    )
    return bool(getattr(result, "rowcount", 0) == 1)


@functools.cache
def _release_statement(model: type[Reply] | type[Delivery]) -> Any:
    table = model.__table__  # type: ignore[union-attr]
    return _own_sending_claim(table).values(state=JobState.PENDING, claimed_at=None, attempts=table.c.attempts - 1)


def release_untransmitted(session: Session, record: SendRecord) -> bool:
    """`release_claim` for a claim whose bytes the caller knows never left, even though it is `transmitting`.

    For a decision that wrote its reply `transmitting` (record_verdict) and whose job was stopped before the
    send began: the reply is pending again instead of being settled as uncertain and never sent.
    """
    result = session.execute(
        _release_untransmitted_statement(record.model),
        {"target_id": record.message_id, "claimed_attempt": record.attempts},
    )
    return bool(getattr(result, "rowcount", 0) == 1)


@functools.cache
def _release_untransmitted_statement(model: type[Reply] | type[Delivery]) -> Any:
    table = model.__table__  # type: ignore[union-attr]
    return (
        update(table)
        .where(
            table.c.message_id == bindparam("target_id"),
            table.c.attempts == bindparam("claimed_attempt"),
            or_(table.c.state == JobState.SENDING, table.c.state == JobState.TRANSMITTING),
        )
        .values(state=JobState.PENDING, claimed_at=None, attempts=table.c.attempts - 1)
    )


def _own_sending_claim(table: Table) -> Any:
    """UPDATE of one send still `sending` under the claim this worker took (same attempt number)."""
    return update(table).where(
        table.c.message_id == bindparam("target_id"),
        table.c.state == JobState.SENDING,
        table.c.attempts == bindparam("claimed_attempt"),
    )


def renew_claims(session: Session, records: list[SendRecord]) -> None:
    """Claims this worker holds stay fresh, so only a stopped worker's go stale (same attempt: its own claim)."""
    now = utcnow()
    for model in (Reply, Delivery):
        rows = [
            {"target_id": r.message_id, "claimed_attempt": r.attempts, "now": now} for r in records if r.model is model
        ]
        if rows:
            session.execute(_renew_statement(model), rows)


@functools.cache
def _renew_statement(model: type[Reply] | type[Delivery]) -> Any:
    table = model.__table__  # type: ignore[union-attr]
    return (
        update(table)
        .where(
            table.c.message_id == bindparam("target_id"),
            table.c.attempts == bindparam("claimed_attempt"),
            # not in_(): an expanding IN cannot run as executemany
            or_(table.c.state == JobState.SENDING, table.c.state == JobState.TRANSMITTING),
        )
        .values(claimed_at=bindparam("now"))
    )


@dataclass(frozen=True)
class StuckWork:
    received: list[str]
    replies: list[str]
    deliveries: list[str]


def mark_transmitting(session: Session, record: SendRecord) -> bool:
    """SENDING -> TRANSMITTING for this claim only; False when the claim is no longer ours.

    A worker that stalled past its lease may find its claim taken over (the taker's claim has the next
    attempt number): it must not transmit, or the citizen could get the reply twice.
    """
    result = session.execute(
        _transmitting_statement(record.model),
        {"target_id": record.message_id, "claimed_attempt": record.attempts, "now": utcnow()},
    )
    return bool(getattr(result, "rowcount", 0) == 1)


@functools.cache
def _transmitting_statement(model: type[Reply] | type[Delivery]) -> Any:
    table = model.__table__  # type: ignore[union-attr]
    return _own_sending_claim(table).values(state=JobState.TRANSMITTING, claimed_at=bindparam("now"))


def record_send_outcome(
    session: Session, model: type[Reply] | type[Delivery], message_id: str, state: str, error: str | None
) -> None:
    """A reply's or delivery's new state after a send attempt; a delivered or failed original moves its message on."""
    sent = state == JobState.SENT
    now = utcnow()
    session.execute(
        _outcome_statement(model, sent),
        {
            "target_id": message_id,
            "new_state": state,
            "new_error": mask_addresses(error)[:500] if error else None,
            "now": now,
        },
    )
    if model is Delivery and state in (JobState.SENT, JobState.FAILED):
        new_state = MessageState.DELIVERED if sent else MessageState.FAILED
        session.execute(_MESSAGE_DELIVERY_STATE, {"target_id": message_id, "new_state": new_state, "now": now})


@functools.cache
def _outcome_statement(model: type[Reply] | type[Delivery], sent: bool) -> Any:
    table = model.__table__  # type: ignore[union-attr]
    values: dict[str, Any] = {"state": bindparam("new_state"), "error": bindparam("new_error")}
    if sent:
        values["sent_at" if model is Reply else "delivered_at"] = bindparam("now")
    return update(table).where(table.c.message_id == bindparam("target_id")).values(**values)


_MESSAGE_DELIVERY_STATE = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("target_id"))
    .values(state=bindparam("new_state"), updated_at=bindparam("now"))
)


def settle_uncertain_replies(engine: Engine, stale_after: timedelta) -> int:
    """Replies whose transmission was cut off by a crash: never resend, record them as uncertain."""
    now = utcnow()
    with session_scope(engine) as uow:
        rows = uow.session.exec(
            model_select(Reply, Message, Decision)
            .where(col(Reply.message_id) == col(Message.id), col(Decision.message_id) == col(Message.id))
            .where(col(Reply.state) == JobState.TRANSMITTING, col(Reply.claimed_at) < now - stale_after)
            .limit(1000)
        ).all()
        for reply, message, decision in rows:
            reply.state = JobState.UNCERTAIN
            reply.error = "worker stopped during transmission; not resent to avoid a duplicate"
            uow.session.add(reply)
            bump_message_counter(uow, message, decision, Outcome.REPLY_UNCERTAIN)
        return len(rows)


def find_stuck(engine: Engine, older_than: timedelta, stale_sending: timedelta, limit: int = 1000) -> StuckWork:
    now = utcnow()
    with Session(engine) as session:
        received = session.exec(
            model_select(Message.id)
            .where(Message.state == MessageState.RECEIVED, Message.received_at < now - older_than)
            .order_by(col(Message.received_at))
            .limit(limit)
        ).all()
        replies = session.exec(
            model_select(Reply.message_id)
            .where(
                or_(
                    (col(Reply.state) == JobState.PENDING) & (col(Reply.created_at) < now - older_than),
                    (col(Reply.state) == JobState.SENDING) & (col(Reply.claimed_at) < now - stale_sending),
                )
            )
            .limit(limit)
        ).all()
        deliveries = session.exec(
            model_select(Delivery.message_id)
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

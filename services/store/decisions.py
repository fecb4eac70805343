"""Recording a verdict: the decision row, the claimed reply and delivery, the reply ledger and the counters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session

from services.config import Settings
from services.domain import Outcome, Verdict, suppressed
from services.store.models import Decision, Delivery, JobState, Message, MessageState, Reply, ReplyLedger, utcnow
from services.store.queries import (
    begin_decision,
    bump_message_counter,
    insert_now,
    load_message,
    mark_repeat_contact,
    reply_allowance,
)
from services.store.records import SendRecord
from services.store.uow import UnitOfWork


@dataclass(frozen=True)
class Pending:
    """Which follow-up work a message already decided still has."""

    reply: bool
    deliver: bool


@dataclass(frozen=True)
class Decided:
    """A recorded verdict (after the reply window and caps) and the sends it claimed for the calling job."""

    message: Message
    verdict: Verdict
    reply: SendRecord | None
    delivery: SendRecord | None


def pending_of(session: Session, message_id: str) -> Pending:
    reply = session.get(Reply, message_id)
    delivery = session.get(Delivery, message_id)
    return Pending(
        reply=reply is not None and reply.state in (JobState.PENDING, JobState.SENDING),
        deliver=delivery is not None and delivery.state in (JobState.PENDING, JobState.SENDING),
    )


def message_to_decide(session: Session, message_id: str) -> Message | Pending | None:
    """The stored message to decide (opened); a message already decided returns its pending work instead."""
    message = load_message(session, message_id)
    if message is None:
        return None
    if message.state != MessageState.RECEIVED:
        return pending_of(session, message_id)
    return message


def reply_message_id(settings: Settings, message_id: str) -> str:
    """The Message-ID of the reply to a message (the same on every attempt)."""
    return f"<reply.{message_id}@{settings.hostname}>"


def record_verdict(
    uow: UnitOfWork, settings: Settings, message: Message, verdict: Verdict, *, reply_transmitting: bool = False
) -> Decided | Pending:
    """Write a verdict in the caller's transaction; a message someone else decided returns its pending work.

    The reply and delivery rows start claimed (sending) by the calling job, which sends them next; if that
    job dies, the sweep finds them stale like any other interrupted send. With `reply_transmitting` (the job
    holds the reply's bytes and transmits them right after the commit) the reply starts `transmitting`
    instead, as `mark_transmitting` would set it: one transaction less, and never taken over or resent.
    """
    session = uow.session
    if not begin_decision(session, message.id, verdict.sender_pseudonym, MessageState.CLASSIFIED):
        uow.write_inserts()  # a decision of this batch may hold its rows back until the commit
        return pending_of(session, message.id)
    verdict = verdict.with_allowance(_allowance(session, settings, message, verdict))
    # nothing in this transaction reads these rows back (but pending_of): written in one executemany per table
    uow.insert_later(
        Decision,
        {
            "message_id": message.id,
            "decided_at": utcnow(),
            "pseudonym_key_id": settings.pseudonym_key_id,
            **verdict.columns(),
        },
    )
    reply_state = JobState.TRANSMITTING if reply_transmitting else JobState.SENDING
    reply = _claim_reply(uow, settings, message, verdict, reply_state) if verdict.reply else None
    delivery = _claim_send(uow, Delivery, {"message_id": message.id, "delivered_at": None})
    message.state = MessageState.CLASSIFIED
    _count(uow, message, verdict)
    return Decided(message, verdict, reply, delivery)


def _allowance(session: Session, settings: Settings, message: Message, verdict: Verdict) -> str | None:
    """The store's part of the reply decision: the reply window and the daily caps, on arrival time."""
    if not verdict.reply or verdict.template is None or verdict.sender_pseudonym is None:
        return None
    return reply_allowance(
        session,
        verdict.sender_pseudonym,
        verdict.template,
        message.received_at,
        timedelta(days=settings.reply_window_days),
        settings.reply_daily_cap,
        verdict.domain_pseudonym,
        settings.reply_domain_daily_cap,
    )


def _claim_send(
    uow: UnitOfWork, model: type[Reply] | type[Delivery], values: dict[str, object], state: str = JobState.SENDING
) -> SendRecord:
    """A reply or delivery row that starts claimed (sending, attempt 1) by the calling job."""
    claimed_at = utcnow()
    row: dict[str, object] = {
        "state": state,
        "attempts": 1,
        "created_at": claimed_at,
        "claimed_at": claimed_at,
        "error": None,
        **values,
    }
    uow.insert_later(model, row)
    return SendRecord.of(model, row)


def _claim_reply(uow: UnitOfWork, settings: Settings, message: Message, verdict: Verdict, state: str) -> SendRecord:
    assert verdict.template is not None and verdict.sender_pseudonym is not None
    claimed = _claim_send(
        uow,
        Reply,
        {
            "message_id": message.id,
            "reply_message_id": reply_message_id(settings, message.id),
            "in_reply_to": None,
            "references": None,
            "sent_at": None,
        },
        state,
    )
    # written at once: the next decision of this batch may be the same sender's and must see it
    insert_now(
        uow.session,
        ReplyLedger,
        {
            "sender_pseudonym": verdict.sender_pseudonym,
            "key_id": settings.pseudonym_key_id,
            "template": verdict.template,
            "granted_at": message.received_at,
            "message_id": message.id,
            "received_at": message.received_at,
            "mailbox": message.mailbox,
            "category": verdict.category,
            "channel": verdict.channel,
            "repeat_7d": False,
            "repeat_30d": False,
            "domain_pseudonym": verdict.domain_pseudonym,
        },
    )
    # the citizen's Message-IDs stay out of the database (they are only sealed inside the raw message); the
    # inline send has them here, a later retry takes them from the opened original again
    return SendRecord(
        Reply, message.id, claimed.attempts, claimed.reply_message_id, verdict.in_reply_to, verdict.references
    )


def _count(uow: UnitOfWork, message: Message, verdict: Verdict) -> None:
    def count(outcome: str) -> None:
        bump_message_counter(uow, message, verdict, outcome)

    count(Outcome.RECEIVED)
    if verdict.sender_pseudonym is not None and verdict.category != "automated":
        # windows (repeat senders) are measured on arrival time, not on processing time
        mark_repeat_contact(uow, verdict.sender_pseudonym, message.received_at)
    if verdict.reply:
        count(Outcome.REPLIED)
    elif verdict.suppressed is not None:
        count(suppressed(verdict.suppressed))
    else:
        count(Outcome.NO_REPLY)
    if verdict.held:
        count(Outcome.HELD)

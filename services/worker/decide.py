"""process_message's core: parse, classify, apply reply policy and dedup, record everything in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.classify.engine import MailFacts
from services.mail import parse_mail
from services.pseudonym import pseudonymize
from services.reply.compose import threading_headers
from services.reply.policy import suppression_reason
from services.store.db import session_scope
from services.store.models import (
    Decision,
    Delivery,
    JobState,
    Message,
    MessageState,
    Reply,
    ReplyLedger,
    utcnow,
)
from services.store.queries import begin_decision, bump_counter, mark_repeat_contact, reply_allowance
from services.worker.deps import Deps

log = structlog.get_logger(__name__)

# Non-negotiable 5: these always reach a human with a priority flag, whatever a rule file says.
SAFETY_PRIORITY = {"emergency": "urgent", "objection": "high"}
_PRIORITY_ORDER = ("low", "normal", "high", "urgent")


@dataclass(frozen=True)
class Pending:
    """Which follow-up jobs a message needs."""

    reply: bool
    deliver: bool


def _pending_of(session: Session, message_id: str) -> Pending:
    reply = session.get(Reply, message_id)
    delivery = session.get(Delivery, message_id)
    return Pending(
        reply=reply is not None and reply.state in (JobState.PENDING, JobState.SENDING),
        deliver=delivery is not None and delivery.state in (JobState.PENDING, JobState.SENDING),
    )


def decide(deps: Deps, message_id: str) -> Pending | None:
    """Idempotent: a message already decided returns its pending work instead of a second decision."""
    with Session(deps.engine) as session:
        message = session.get(Message, message_id)
        if message is None:
            log.warning("process.unknown_message")
            return None
        if message.state != MessageState.RECEIVED:
            return _pending_of(session, message_id)
        raw = message.raw or b""
        envelope_from = message.mail_from
        envelope_to = tuple(message.rcpt_tos)
        received_at = message.received_at
        mailbox = message.mailbox

    mail = parse_mail(raw)
    ruleset = deps.rules.current
    facts = MailFacts.of(mail, envelope_from, envelope_to, received_at)
    language = facts.language
    classification = ruleset.classify(facts)
    action = classification.action
    category = action.category
    deliver = action.deliver or category in SAFETY_PRIORITY
    priority: str = action.priority
    if category in SAFETY_PRIORITY and _PRIORITY_ORDER.index(priority) < _PRIORITY_ORDER.index(
        SAFETY_PRIORITY[category]
    ):
        priority = SAFETY_PRIORITY[category]

    settings = deps.settings
    reason = suppression_reason(mail, envelope_from, envelope_to, ruleset, deps.policy)
    sender_key = envelope_from or mail.from_address
    pseudonym = pseudonymize(sender_key, settings.effective_pseudonym_key) if sender_key else None
    # windows (dedup, daily cap, repeat senders) are measured on arrival time, not on processing time
    now = received_at
    in_reply_to, references = threading_headers(mail)

    try:
        with session_scope(deps.engine) as session:
            if not begin_decision(session, message_id, pseudonym):
                return _pending_of(session, message_id)
            message = session.get(Message, message_id)
            assert message is not None
            template = action.reply
            if template is not None and reason is None and pseudonym is not None:
                reason = reply_allowance(
                    session,
                    pseudonym,
                    template,
                    now,
                    timedelta(days=settings.reply_window_days),
                    settings.reply_daily_cap,
                )
            will_reply = template is not None and reason is None
            session.add(
                Decision(
                    message_id=message_id,
                    category=category,
                    channel=action.channel,
                    rule_id=classification.rule_id,
                    ruleset_version=ruleset.version,
                    template=template,
                    priority=priority,
                    deliver_to=action.deliver_to if deliver else None,
                    language=language,
                    reply=will_reply,
                    suppressed=reason,
                    sender_pseudonym=pseudonym,
                    pseudonym_key_id=settings.pseudonym_key_id,
                    tags=list(action.tags),
                    defects=list(mail.defects),
                )
            )
            if will_reply:
                assert template is not None and pseudonym is not None
                session.add(
                    Reply(
                        message_id=message_id,
                        reply_message_id=f"<reply.{message_id}@{settings.hostname}>",
                        in_reply_to=in_reply_to,
                        references=references,
                    )
                )
                session.add(
                    ReplyLedger(
                        sender_pseudonym=pseudonym,
                        key_id=settings.pseudonym_key_id,
                        template=template,
                        message_id=message_id,
                        granted_at=received_at,
                        received_at=received_at,
                        mailbox=mailbox,
                        category=category,
                        channel=action.channel,
                    )
                )
            if deliver:
                session.add(Delivery(message_id=message_id))
            message.state = MessageState.CLASSIFIED if deliver else MessageState.HELD
            message.updated_at = utcnow()
            session.add(message)

            def count(outcome: str) -> None:
                bump_counter(
                    session,
                    hour=received_at,
                    mailbox=mailbox,
                    category=category,
                    channel=action.channel,
                    outcome=outcome,
                )

            count("received")
            if pseudonym is not None and category != "automated":
                mark_repeat_contact(session, pseudonym, now)
            if will_reply:
                count("replied")
            elif reason is not None:
                count(f"suppressed:{reason}")
            else:
                count("no-reply")
            if not deliver:
                count("held")
    except IntegrityError:
        # A duplicate job decided the same message at the same moment; its decision stands.
        log.info("process.lost_race")
        return None
    log.info(
        "process.decided",
        category=category,
        rule=classification.rule_id,
        language=language,
        reply=will_reply,
        suppressed=reason,
        priority=priority,
        ruleset=ruleset.version,
        defects=len(mail.defects),
    )
    return Pending(reply=will_reply, deliver=deliver)

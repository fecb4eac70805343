"""process_message's core: parse, classify and apply the reply policy, then record it all in one transaction."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.classify.engine import MailFacts, RuleSet
from services.config import Settings
from services.mail import parse_mail
from services.pseudonym import pseudonymize
from services.reply.compose import threading_headers
from services.reply.policy import (
    PolicyConfig,
    domain_capped,
    reply_domain,
    reply_identity,
    sender_authentication,
    suppression_reason,
)
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
from services.store.queries import (
    begin_decision,
    bump_message_counter,
    insert_at_commit,
    insert_now,
    load_message,
    mark_repeat_contact,
    reply_allowance,
    write_deferred_inserts,
)
from services.store.records import DecisionRecord, SendRecord
from services.worker.deps import Deps

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Pending:
    """Which follow-up work a message already decided still has."""

    reply: bool
    deliver: bool


@dataclass(frozen=True)
class Classified:
    """Everything decided outside the database: classification, policy verdict, threading headers."""

    message: Message  # as read (detached); record_decision moves its state on
    category: str
    channel: str
    rule_id: str
    ruleset_version: str
    template: str | None
    priority: str
    deliver: bool
    deliver_to: str | None
    language: str
    reason: str | None
    pseudonym: str | None
    tags: tuple[str, ...]
    defects: tuple[str, ...]
    in_reply_to: str | None
    references: str | None
    path: str = "rule"
    confidence: str = "high"
    scores: dict[str, float] | None = None
    held: bool = False  # the rule said deliver: false; the original goes to the postmaster target
    domain_pseudonym: str | None = None  # an unauthenticated sender's domain: its replies share a daily cap


@dataclass(frozen=True)
class Decided:
    """A recorded decision and the sends it claimed for the calling job."""

    message: Message
    decision: DecisionRecord
    reply: SendRecord | None
    delivery: SendRecord | None


def _pending_of(session: Session, message_id: str) -> Pending:
    write_deferred_inserts(session)  # a decision of this batch may hold its rows back until the commit
    reply = session.get(Reply, message_id)
    delivery = session.get(Delivery, message_id)
    return Pending(
        reply=reply is not None and reply.state in (JobState.PENDING, JobState.SENDING),
        deliver=delivery is not None and delivery.state in (JobState.PENDING, JobState.SENDING),
    )


def read_message(deps: Deps, message_id: str) -> Message | Pending | None:
    """The stored message to decide; a message already decided returns its pending work instead."""
    with Session(deps.engine) as session:
        message = load_message(session, message_id)
        if message is None:
            log.warning("process.unknown_message")
            return None
        if message.state != MessageState.RECEIVED:
            return _pending_of(session, message_id)
        return message


def classify_message(deps: Deps, message: Message) -> Classified:
    """Parse and classify a read message and apply the reply policy (no database work)."""
    return classify_stored(deps.rules.current, deps.policy, deps.settings.effective_pseudonym_key, message)


def classify_stored(ruleset: RuleSet, policy: PolicyConfig, pseudonym_key: bytes, message: Message) -> Classified:
    """The worker's decision for a message row, from the rule set alone: no database, no network.

    `channelshift preview` calls it with a row it builds in memory, so it shows what the worker decides.
    """
    envelope_from = message.mail_from
    envelope_to = tuple(message.rcpt_tos)
    mail = parse_mail(message.raw or b"")
    facts = MailFacts.of(mail, envelope_from, envelope_to, message.received_at)
    classification = ruleset.classify(facts)
    action = classification.action
    category = action.category
    # the safety floor is applied by RuleSet.classify, as explain sees it; held mail is delivered too, to the
    # postmaster target (non-negotiable 1: never silent)
    held = not action.deliver
    priority: str = action.priority
    sender_key = envelope_from or mail.from_address
    auth = sender_authentication(mail, policy)
    domain_pseudonym = None
    if envelope_from and domain_capped(auth, policy):
        domain_pseudonym = pseudonymize("@" + reply_domain(envelope_from), pseudonym_key)
    in_reply_to, references = threading_headers(mail)
    return Classified(
        message=message,
        category=category,
        channel=action.channel,
        rule_id=classification.rule_id,
        ruleset_version=ruleset.version,
        template=action.reply,
        priority=priority,
        deliver=True,
        deliver_to=ruleset.settings.delivery_target(action),
        language=facts.language,
        reason=suppression_reason(mail, envelope_from, envelope_to, ruleset, policy, auth),
        pseudonym=pseudonymize(reply_identity(sender_key), pseudonym_key) if sender_key else None,
        tags=tuple(action.tags),
        # a rule regex that ran out of time is flagged to staff like a parse limit (the pattern, not the text)
        defects=(*mail.defects, *(f"limit:regex-timeout {pattern[:60]}" for pattern in facts.timeouts)),
        in_reply_to=in_reply_to,
        references=references,
        path=classification.path,
        confidence=classification.confidence,
        scores=dict(classification.scores[:3]) if classification.scores else None,
        held=held,
        domain_pseudonym=domain_pseudonym,
    )


def record_decision(session: Session, settings: Settings, found: Classified) -> Decided | Pending:
    """Write the decision, reply/delivery rows, ledger and counters in the caller's transaction.

    The reply and delivery rows start claimed (sending) by the calling job, which sends them next; if that
    job dies, the sweep finds them stale like any other interrupted send. A message someone else decided
    returns its pending work instead.
    """
    message = found.message
    message_id = message.id
    new_state = MessageState.CLASSIFIED if found.deliver else MessageState.HELD
    if not begin_decision(session, message_id, found.pseudonym, new_state):
        return _pending_of(session, message_id)
    # windows (dedup, daily cap, repeat senders) are measured on arrival time, not on processing time
    now = message.received_at
    reason = found.reason
    template = found.template
    if template is not None and reason is None and found.pseudonym is not None:
        reason = reply_allowance(
            session,
            found.pseudonym,
            template,
            now,
            timedelta(days=settings.reply_window_days),
            settings.reply_daily_cap,
            found.domain_pseudonym,
            settings.reply_domain_daily_cap,
        )
    will_reply = template is not None and reason is None
    decision_values: dict[str, object] = {
        "message_id": message_id,
        "decided_at": utcnow(),
        "category": found.category,
        "channel": found.channel,
        "rule_id": found.rule_id,
        "ruleset_version": found.ruleset_version,
        "template": template,
        "priority": found.priority,
        "deliver_to": found.deliver_to,
        "language": found.language,
        "reply": will_reply,
        "suppressed": reason,
        "sender_pseudonym": found.pseudonym,
        "pseudonym_key_id": settings.pseudonym_key_id,
        "tags": list(found.tags),
        "defects": list(found.defects),
        "path": found.path,
        "confidence": found.confidence,
        "scores": found.scores,
    }
    # nothing in this transaction reads these rows back (but _pending_of): written in one executemany per table
    insert_at_commit(session, Decision, decision_values)
    decision = DecisionRecord.of(decision_values)
    claimed_at = utcnow()
    # the calling job sends both next: they start claimed by it
    claimed: dict[str, object] = {
        "message_id": message_id,
        "state": JobState.SENDING,
        "attempts": 1,
        "created_at": claimed_at,
        "claimed_at": claimed_at,
        "error": None,
    }
    reply = delivery = None
    if will_reply:
        assert template is not None and found.pseudonym is not None
        reply_values: dict[str, object] = {
            **claimed,
            "reply_message_id": f"<reply.{message_id}@{settings.hostname}>",
            "in_reply_to": None,
            "references": None,
            "sent_at": None,
        }
        insert_at_commit(session, Reply, reply_values)
        # the citizen's Message-IDs stay out of the database (they are only sealed inside the raw message);
        # the inline send has them here, a later retry takes them from the opened original again
        reply = SendRecord.of(Reply, {**reply_values, "in_reply_to": found.in_reply_to, "references": found.references})
        # written at once: the next decision of this batch may be the same sender's and must see it
        insert_now(
            session,
            ReplyLedger,
            {
                "sender_pseudonym": found.pseudonym,
                "key_id": settings.pseudonym_key_id,
                "template": template,
                "granted_at": message.received_at,
                "message_id": message_id,
                "received_at": message.received_at,
                "mailbox": message.mailbox,
                "category": found.category,
                "channel": found.channel,
                "repeat_7d": False,
                "repeat_30d": False,
                "domain_pseudonym": found.domain_pseudonym,
            },
        )
    if found.deliver:
        delivery_values: dict[str, object] = {**claimed, "delivered_at": None}
        insert_at_commit(session, Delivery, delivery_values)
        delivery = SendRecord.of(Delivery, delivery_values)
    message.state = new_state

    def count(outcome: str) -> None:
        bump_message_counter(session, message, decision, outcome)

    count("received")
    if found.pseudonym is not None and found.category != "automated":
        mark_repeat_contact(session, found.pseudonym, now)
    if will_reply:
        count("replied")
    elif reason is not None:
        count(f"suppressed:{reason}")
    else:
        count("no-reply")
    if found.held or not found.deliver:
        count("held")
    return Decided(message, decision, reply, delivery)


async def decide(deps: Deps, message_id: str) -> Decided | Pending | None:
    """Idempotent: a message already decided returns its pending work instead of a second decision."""
    read = read_message(deps, message_id)  # one indexed row
    if not isinstance(read, Message):
        return read
    # Off the event loop: a mail the fast model is unsure about asks the embedding model (about 0.1 s of C code
    # that releases the GIL), and other jobs wait on the relay and Redis meanwhile. The hand-off to a thread
    # used to cost more than the rules alone; against the embedding it is noise.
    found = await asyncio.to_thread(classify_message, deps, read)
    try:
        decided = await deps.batcher.run(lambda session: record_decision(session, deps.settings, found))
    except IntegrityError:
        # A duplicate job decided the same message at the same moment; its decision stands.
        log.info("process.lost_race")
        return None
    if isinstance(decided, Decided):
        log.info(
            "process.decided",
            category=found.category,
            rule=found.rule_id,
            language=found.language,
            reply=decided.decision.reply,
            suppressed=decided.decision.suppressed,
            priority=found.priority,
            ruleset=found.ruleset_version,
            defects=len(found.defects),
        )
    return decided

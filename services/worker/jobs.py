"""arq jobs: process_message, send_reply, deliver_original and the sweep; all idempotent, ids only."""

from __future__ import annotations

import asyncio
import collections
import functools
from dataclasses import dataclass
from datetime import timedelta
from email.errors import MessageError
from typing import Any

import structlog
from arq import Retry
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from services import queue
from services.domain import Outcome, Verdict
from services.mail import parse_mail
from services.metrics import DELIVERY_ATTEMPTS, JOB_SECONDS, timed
from services.reply.build import ReplyUnbuildable, build_reply, tracked_links
from services.reply.compose import threading_headers
from services.reply.feedback import staff_original
from services.reply.original import routing_headers
from services.reply.send import (
    MaildirSender,
    PermanentSendError,
    TransientSendError,
    UnsendableAddressError,
    is_plain_address,
    send_failure,
)
from services.reply.wrapper import build_wrapper
from services.store.decisions import Pending
from services.store.models import Delivery, JobState, Message, Reply
from services.store.purge import purge
from services.store.queries import (
    bump_message_counter,
    claim,
    find_stuck,
    held_for,
    load_decision,
    load_message,
    load_send,
    mark_transmitting,
    record_send_outcome,
    release_claim,
    settle_uncertain_replies,
)
from services.store.records import SendRecord
from services.store.rollup import refresh_daily_rollup
from services.store.uow import UnitOfWork
from services.worker.decide import decide_message
from services.worker.deps import Deps

log = structlog.get_logger(__name__)


def backoff_seconds(attempt: int, base: float = 15.0) -> float:
    return float(min(base * 2 ** max(attempt - 1, 0), 900.0))


async def process_message(ctx: dict[str, Any], message_ids: str | list[str]) -> str:
    """Decide a batch of stored mails (the gateway's group commit), each then sent on as by its own job.

    Each mail is idempotent on its own: one already decided is not decided again, so a batch run again (a
    crashed or stopped worker) decides only what is left. A mail that fails does not stop its batch-mates: the
    job reports the failure after the others are done, and the sweep offers that mail again later, alone. A
    single id (a sweep's job, or one queued before batches) is a batch of one.
    """
    deps: Deps = ctx["deps"]
    batch = [message_ids] if isinstance(message_ids, str) else message_ids
    outcomes = await asyncio.gather(
        *(_process_one(ctx, deps, message_id) for message_id in batch), return_exceptions=True
    )
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if failures:
        if len(batch) > 1:
            log.warning("process.batch_failures", failed=len(failures), batch=len(batch))
        raise failures[0]
    if len(batch) == 1:
        return str(outcomes[0])
    tally = collections.Counter(str(outcome) for outcome in outcomes)
    return ", ".join(f"{outcome} {count}" for outcome, count in sorted(tally.items()))


async def _process_one(ctx: dict[str, Any], deps: Deps, message_id: str) -> str:
    """Decide, then send the reply and hand on the original (the first attempt of each), within the mail limit.

    Retries after a transient failure run as their own send_reply / deliver_original jobs.
    """
    structlog.contextvars.bind_contextvars(message_id=message_id, job="process")
    async with deps.mail_slots:
        with timed(JOB_SECONDS, "process"):
            decided = await decide_message(deps, message_id, functools.partial(_reply_bytes_or_none, deps))
        if decided is None:
            return "skipped"
        if isinstance(decided, Pending):
            # decided earlier (a retried or duplicate job): hand the open work to the send jobs
            if decided.reply:
                await queue.enqueue(ctx["redis"], queue.SEND_REPLY, message_id)
            if decided.deliver:
                await queue.enqueue(ctx["redis"], queue.DELIVER, message_id)
            return "decided"
        new, reply_data = decided.decided, decided.reply_data
        sends = []
        if new.reply is not None:
            sends.append(_send_inline(ctx, Loaded(new.message, new.verdict, new.reply), "reply", reply_data))
        if new.delivery is not None:
            sends.append(_send_inline(ctx, Loaded(new.message, new.verdict, new.delivery), "delivery"))
        await asyncio.gather(*sends)
        return "decided"


@dataclass(frozen=True)
class Loaded:
    """A claimed reply or delivery with its message and decision."""

    message: Message
    decision: Verdict
    row: SendRecord


@dataclass(frozen=True)
class Held:
    """The send is claimed by another job, perhaps of a stopped worker: takeable in `seconds` unless renewed."""

    seconds: float


def _claim_and_load(
    session: Session, model: type[Reply] | type[Delivery], message_id: str, stale: timedelta
) -> Loaded | Held | None:
    if not claim(session, model, message_id, stale):
        seconds = held_for(session, model, message_id, stale)
        return None if seconds is None else Held(seconds)
    message = load_message(session, message_id)
    decision = load_decision(session, message_id)
    row = load_send(session, model, message_id)
    if message is None or decision is None or row is None:
        return None
    return Loaded(message, decision, row)


async def _send_inline(ctx: dict[str, Any], loaded: Loaded, kind: str, reply_data: bytes | None = None) -> None:
    """A transient failure here becomes a deferred send job instead of a retry of the whole process job.

    `reply_data`: the reply's bytes, built before the decision that already marked it transmitting.
    """
    job = queue.SEND_REPLY if kind == "reply" else queue.DELIVER
    with structlog.contextvars.bound_contextvars(job=kind), timed(JOB_SECONDS, kind):
        try:
            await _transmit_or_release(ctx["deps"], loaded, kind, reply_data)
        except Retry as retry:
            await queue.enqueue(ctx["redis"], job, loaded.message.id, defer=(retry.defer_score or 0) / 1000)


async def _send(deps: Deps, model: type[Reply] | type[Delivery], message_id: str, kind: str) -> str:
    loaded = await deps.batcher.run(lambda uow: _claim_and_load(uow.session, model, message_id, deps.stale_sending))
    if loaded is None:
        return "skipped"
    if isinstance(loaded, Held):
        # Come back when the claim would be stale: a live holder renews it (and settles the send meanwhile, so
        # the next try is skipped), a stopped worker's is taken over then instead of at the next sweep.
        raise Retry(defer=timedelta(seconds=loaded.seconds + 1))
    return await _transmit_or_release(deps, loaded, kind)


async def _transmit_or_release(deps: Deps, loaded: Loaded, kind: str, reply_data: bytes | None = None) -> str:
    """`_transmit`; a job stopped before it (shutdown deadline, job timeout) gives its claim back.

    Released, the send is pending again and the next worker takes it at once instead of waiting for the
    claim to go stale. A reply already transmitting is left alone (release_claim checks the state).
    """
    try:
        with deps.held.holding(loaded.row):
            return await _transmit(deps, loaded, kind, reply_data)
    except asyncio.CancelledError:
        # shielded: a second cancellation must not cut the release short
        released = await asyncio.shield(deps.batcher.run(lambda uow: release_claim(uow.session, loaded.row)))
        log.info(f"{kind}.released" if released else f"{kind}.stopped")
        raise


async def _transmit(deps: Deps, loaded: Loaded, kind: str, reply_data: bytes | None = None) -> str:
    """Send a claimed reply or delivery and record the outcome; raises Retry on a transient failure.

    A reply with `reply_data` is transmitting already (its decision marked it), so it is sent as it is.

    Every exception ends in one of the two kinds (`_failure`), so no row is left `sending` by an error.
    """
    message, decision, row = loaded.message, loaded.decision, loaded.row
    model = row.model
    note: str | None = None
    try:
        if model is Reply:
            data = reply_data
            if data is None:
                data = _reply_bytes(deps, message, decision, row)
                # from here on, a crash leaves the reply "transmitting": settled as uncertain, never resent
                ours = await deps.batcher.run(lambda uow: mark_transmitting(uow.session, row))
                if not ours:
                    log.warning("reply.claim_taken_over", attempt=row.attempts)
                    return "skipped"
            await deps.reply_sender.send(f"{message.id}.reply", "", [message.mail_from], data)
        else:
            note = await _deliver(deps, message, decision)
    except Exception as exc:
        failure = _failure(exc)
        error = str(failure)
        if isinstance(failure, TransientSendError):
            await deps.batcher.run(lambda s: _finish(s, model, message, decision, JobState.PENDING, error))
            log.warning(f"{kind}.retry", attempt=row.attempts, error=error)
            defer = timedelta(seconds=backoff_seconds(row.attempts, deps.settings.retry_base_seconds))
            raise Retry(defer=defer) from exc
        failed = Outcome.REPLY_FAILED if kind == "reply" else Outcome.DELIVERY_FAILED
        await deps.batcher.run(lambda s: _finish(s, model, message, decision, JobState.FAILED, error, failed))
        log.error(f"{kind}.failed", error=error)
        return "failed"
    if kind == "reply":
        outcomes: tuple[str, ...] = (Outcome.REPLY_SENT,)
    else:
        outcomes = (Outcome.DELIVERED,) if note is None else (Outcome.DELIVERED, Outcome.DELIVERED_WRAPPED)
    await deps.batcher.run(lambda s: _finish(s, model, message, decision, JobState.SENT, note, *outcomes))
    log.info(f"{kind}.sent", attempt=row.attempts, wrapped=note is not None)
    return "sent"


def _failure(exc: Exception) -> TransientSendError | PermanentSendError:
    """send_failure(), plus this job's own kind: database trouble passes, so it is transient."""
    if isinstance(exc, SQLAlchemyError):
        return TransientSendError(f"database error: {type(exc).__name__}")
    return send_failure(exc)


def _finish(
    uow: UnitOfWork,
    model: type[Reply] | type[Delivery],
    message: Message,
    decision: Verdict,
    state: str,
    error: str | None,
    *outcomes: str,
) -> None:
    record_send_outcome(uow.session, model, message.id, state, error)
    for outcome in outcomes:
        bump_message_counter(uow, message, decision, outcome)


def _reply_bytes_or_none(deps: Deps, message: Message, decision: Verdict, reply: SendRecord) -> bytes | None:
    """The reply's bytes before its decision is written; None if it cannot be built (the send then says why)."""
    try:
        return _reply_bytes(deps, message, decision, reply)
    except PermanentSendError:
        return None


def _reply_bytes(deps: Deps, message: Message, decision: Verdict, reply: SendRecord) -> bytes:
    """The reply's bytes; a template or address that cannot make a reply is a permanent (counted) failure."""
    assert decision.template is not None and reply.reply_message_id is not None
    ruleset = deps.rules.current  # one set for settings and templates, even if a reload lands meanwhile
    settings = ruleset.settings
    links = None
    if deps.settings.track_clicks:
        links = tracked_links(settings, deps.settings.public_url, deps.settings.effective_pseudonym_key, message.id)
    in_reply_to, references = reply.in_reply_to, reply.references
    if in_reply_to is None and message.raw is not None:
        # a retry: the threading headers were never stored, the opened original still has them
        in_reply_to, references = threading_headers(parse_mail(message.raw))
    try:
        built = build_reply(
            ruleset.renderer or deps.renderer,
            settings,
            template=decision.template,
            language=decision.language,
            received_at=message.received_at,
            message_id=message.id,
            from_address=message.mailbox,
            to_address=message.mail_from,
            reply_message_id=reply.reply_message_id,
            in_reply_to=in_reply_to,
            references=references,
            links=links,
        )
        return built.as_bytes()
    except (ReplyUnbuildable, ValueError, MessageError) as exc:
        raise PermanentSendError(str(exc) if isinstance(exc, ReplyUnbuildable) else type(exc).__name__) from exc


async def _deliver(deps: Deps, message: Message, decision: Verdict) -> str | None:
    """Hand the original to staff; if the relay refuses it for good, a wrapper carrying it instead.

    Returns None when the original went through, else a note on the wrapper (stored with the delivery).
    Raises TransientSendError (retry both later) or PermanentSendError (the wrapper was refused too).
    """
    if message.raw is None:
        raise PermanentSendError("raw message already purged")
    target = decision.deliver_to or "staff"
    target_address = deps.rules.current.settings.targets.get(target)
    headers = routing_headers(message.id, decision)
    headers, data = staff_original(deps.settings, message.id, decision.category, message.raw, headers)
    recipients = [target_address] if target_address else list(message.rcpt_tos)
    sender = deps.delivery_sender
    if target != "staff" and not deps.settings.delivery_url:
        sender = MaildirSender(deps.settings.delivered_dir / f".{target}")
    try:
        await sender.send(f"{message.id}.original", "", recipients, data)
    except Exception as exc:
        refusal = _failure(exc)
        DELIVERY_ATTEMPTS.labels("original", _kind(refusal)).inc()
        if isinstance(refusal, TransientSendError):
            if refusal is exc:
                raise
            raise refusal from exc
    else:
        DELIVERY_ATTEMPTS.labels("original", "sent").inc()
        return None
    log.warning("delivery.original_refused", error=str(refusal))
    wrap_to = refusal.recipients or recipients
    if isinstance(refusal, UnsendableAddressError):
        plain = [address for address in wrap_to if is_plain_address(address)]
        fallback = deps.settings.delivery_fallback_to
        # the fallback stands in for the mailboxes this relay cannot name
        if fallback and len(plain) < len(wrap_to) and fallback not in plain:
            plain.append(fallback)
        wrap_to = plain
        if not wrap_to:
            raise PermanentSendError(
                f"{refusal}; no ASCII staff address for a wrapper (CHANNELSHIFT_DELIVERY_FALLBACK_TO)"
            )
    from_address = message.mailbox if is_plain_address(message.mailbox) else f"postmaster@{deps.settings.hostname}"
    raw = message.raw
    try:
        wrapper = await asyncio.to_thread(
            build_wrapper,
            raw,
            headers,
            message_id=message.id,
            reason=str(refusal),
            from_address=from_address,
            recipients=wrap_to,
            hostname=deps.settings.hostname,
        )
        await sender.send(f"{message.id}.wrapper", "", wrap_to, wrapper.data)
    except Exception as exc:
        failure = _failure(exc)
        DELIVERY_ATTEMPTS.labels("wrapper", _kind(failure)).inc()
        both = f"original refused ({refusal}); wrapper: {failure}"
        if isinstance(failure, TransientSendError):
            raise TransientSendError(both) from exc
        raise PermanentSendError(both) from exc
    DELIVERY_ATTEMPTS.labels("wrapper", "sent").inc()
    attached = wrapper.form + (", re-encoded" if wrapper.reencoded else "")
    return f"original refused ({refusal}); delivered as a wrapper ({attached})"


def _kind(failure: TransientSendError | PermanentSendError) -> str:
    return "transient" if isinstance(failure, TransientSendError) else "permanent"


async def send_reply(ctx: dict[str, Any], message_id: str) -> str:
    structlog.contextvars.bind_contextvars(message_id=message_id, job="reply")
    with timed(JOB_SECONDS, "reply"):
        return await _send(ctx["deps"], Reply, message_id, "reply")


async def deliver_original(ctx: dict[str, Any], message_id: str) -> str:
    # the same job label as a first delivery attempt inside process_message
    structlog.contextvars.bind_contextvars(message_id=message_id, job="delivery")
    with timed(JOB_SECONDS, "delivery"):
        return await _send(ctx["deps"], Delivery, message_id, "delivery")


async def sweep(ctx: dict[str, Any], *, everything: bool = False) -> dict[str, int]:
    """Re-enqueue anything stuck: received but never processed, replies/deliveries left pending, stale claims.

    `everything` (at worker start-up) takes unqueued work of any age: after a restart with an empty Redis (the
    embedded one keeps nothing) there is no job to wait for. Work that has a job is skipped by its job id.
    """
    deps: Deps = ctx["deps"]
    uncertain = await asyncio.to_thread(settle_uncertain_replies, deps.engine, deps.stale_sending)
    if uncertain:
        log.warning("sweep.uncertain_replies", count=uncertain)
    older_than = timedelta(0) if everything else timedelta(seconds=deps.settings.sweep_after_seconds)
    stuck = await asyncio.to_thread(find_stuck, deps.engine, older_than, deps.stale_sending)
    pool = ctx["redis"]
    # a job per mail, so that the next sweep's job ids match this one's: work still queued is not queued twice
    await queue.enqueue_each(pool, queue.PROCESS, stuck.received)
    await queue.enqueue_each(pool, queue.SEND_REPLY, stuck.replies)
    await queue.enqueue_each(pool, queue.DELIVER, stuck.deliveries)
    counts = {"received": len(stuck.received), "replies": len(stuck.replies), "deliveries": len(stuck.deliveries)}
    if any(counts.values()):
        log.info("sweep.requeued", **counts)
    return counts


async def refresh_rollup(ctx: dict[str, Any]) -> dict[str, int]:
    """Every minute (arq cron): rebuild the daily counters of changed hours; a new time zone gets a full build."""
    deps: Deps = ctx["deps"]
    zone = deps.rules.current.settings.timezone
    result = await asyncio.to_thread(refresh_daily_rollup, deps.engine, zone)
    if result.full_build:
        log.info("rollup.built", days=result.days)
    return {"days": result.days, "full_build": int(result.full_build)}


async def purge_expired(ctx: dict[str, Any]) -> dict[str, int]:
    """Daily retention run (arq cron); the same as `channelshift purge`."""
    deps: Deps = ctx["deps"]
    result = await asyncio.to_thread(purge, deps.engine, deps.settings.retention_days)
    log.info("purge.done", messages=result.messages, ledger_rows=result.ledger_rows, clicks=result.clicks)
    return {"messages": result.messages, "ledger_rows": result.ledger_rows, "clicks": result.clicks}

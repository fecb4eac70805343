"""arq jobs: process_message, send_reply, deliver_original and the sweep; all idempotent, ids only."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

import structlog
from arq import Retry
from sqlmodel import Session

from services import queue
from services.links import make_token
from services.metrics import JOB_SECONDS, timed
from services.reply.compose import compose_reply
from services.reply.original import with_routing_headers
from services.reply.send import MaildirSender, PermanentSendError, TransientSendError
from services.store.db import session_scope
from services.store.models import Decision, Delivery, JobState, Message, MessageState, Reply, utcnow
from services.store.purge import purge
from services.store.queries import bump_message_counter, claim, find_stuck, mark_transmitting, settle_uncertain_replies
from services.worker.decide import decide
from services.worker.deps import Deps

log = structlog.get_logger(__name__)


def backoff_seconds(attempt: int, base: float = 15.0) -> float:
    return float(min(base * 2 ** max(attempt - 1, 0), 900.0))


async def process_message(ctx: dict[str, Any], message_id: str) -> str:
    deps: Deps = ctx["deps"]
    structlog.contextvars.bind_contextvars(message_id=message_id, job="process")
    with timed(JOB_SECONDS, "process"):
        pending = await asyncio.to_thread(decide, deps, message_id)
    if pending is None:
        return "skipped"
    if pending.reply:
        await queue.enqueue(ctx["redis"], queue.SEND_REPLY, message_id)
    if pending.deliver:
        await queue.enqueue(ctx["redis"], queue.DELIVER, message_id)
    return "decided"


def _finish(
    deps: Deps, model: type[Reply] | type[Delivery], message_id: str, state: str, error: str | None, outcome: str | None
) -> None:
    with session_scope(deps.engine) as session:
        row = session.get(model, message_id)
        message = session.get(Message, message_id)
        decision = session.get(Decision, message_id)
        if row is None or message is None or decision is None:
            return
        row.state = state
        row.error = error[:500] if error else None
        if state == JobState.SENT:
            if isinstance(row, Reply):
                row.sent_at = utcnow()
            else:
                row.delivered_at = utcnow()
                message.state = MessageState.DELIVERED
                message.updated_at = utcnow()
                session.add(message)
        session.add(row)
        if outcome:
            bump_message_counter(session, message, decision, outcome)


def _load(
    deps: Deps, model: type[Reply] | type[Delivery], message_id: str
) -> tuple[Message, Decision, Reply | Delivery] | None:
    with Session(deps.engine, expire_on_commit=False) as session:
        message = session.get(Message, message_id)
        decision = session.get(Decision, message_id)
        row = session.get(model, message_id)
        if message is None or decision is None or row is None:
            return None
        session.expunge_all()
        return message, decision, cast(Reply | Delivery, row)


async def _send(deps: Deps, model: type[Reply] | type[Delivery], message_id: str, kind: str) -> str:
    claimed = await asyncio.to_thread(claim, deps.engine, model, message_id, deps.stale_sending)
    if not claimed:
        return "skipped"
    loaded = await asyncio.to_thread(_load, deps, model, message_id)
    if loaded is None:
        return "skipped"
    message, decision, row = loaded
    await asyncio.to_thread(mark_transmitting, deps.engine, model, message_id)
    try:
        if isinstance(row, Reply):
            await _send_reply(deps, message, decision, row)
        else:
            await _deliver(deps, message, decision)
    except TransientSendError as exc:
        await asyncio.to_thread(_finish, deps, model, message_id, JobState.PENDING, str(exc), None)
        log.warning(f"{kind}.retry", attempt=row.attempts, error=str(exc))
        raise Retry(defer=timedelta(seconds=backoff_seconds(row.attempts, deps.settings.retry_base_seconds))) from exc
    except PermanentSendError as exc:
        await asyncio.to_thread(_finish, deps, model, message_id, JobState.FAILED, str(exc), f"{kind}-failed")
        log.error(f"{kind}.failed", error=str(exc))
        return "failed"
    await asyncio.to_thread(
        _finish, deps, model, message_id, JobState.SENT, None, "reply-sent" if kind == "reply" else "delivered"
    )
    log.info(f"{kind}.sent", attempt=row.attempts)
    return "sent"


async def _send_reply(deps: Deps, message: Message, decision: Decision, reply: Reply) -> None:
    assert decision.template is not None
    settings = deps.rules.current.settings
    links = None
    if deps.settings.track_clicks:
        base = deps.settings.public_url.rstrip("/")
        key = deps.settings.effective_pseudonym_key
        links = {
            name: f"{base}/r/{make_token(key, message.id, name)}"
            for name, info in settings.channels.items()
            if info.url
        }
    rendered = deps.renderer.render(
        decision.template, decision.language, settings, message.received_at, reference=message.id[:12], links=links
    )
    email_message = compose_reply(
        rendered,
        in_reply_to=reply.in_reply_to,
        references=reply.references,
        from_name=settings.organisation,
        from_address=message.mailbox,
        to_address=message.mail_from,
        reply_message_id=reply.reply_message_id,
    )
    await deps.reply_sender.send(f"{message.id}.reply", "", [message.mail_from], email_message.as_bytes())


async def _deliver(deps: Deps, message: Message, decision: Decision) -> None:
    if message.raw is None:
        raise PermanentSendError("raw message already purged")
    target = decision.deliver_to or "staff"
    target_address = deps.rules.current.settings.targets.get(target)
    headers = {
        "X-Channelshift-Category": decision.category,
        "X-Channelshift-Channel": decision.channel,
        "X-Channelshift-Rule": decision.rule_id,
        "X-Channelshift-Priority": decision.priority,
        "X-Channelshift-Language": decision.language,
        "X-Channelshift-Reply": "sent" if decision.reply else f"suppressed ({decision.suppressed or 'no template'})",
        "X-Channelshift-Ruleset": decision.ruleset_version,
        "X-Channelshift-Id": message.id,
    }
    if decision.defects:
        headers["X-Channelshift-Flags"] = "parse-problems: " + ", ".join(decision.defects)[:300]
    if decision.priority in ("high", "urgent"):
        headers["X-Priority"] = "1 (Highest)" if decision.priority == "urgent" else "2 (High)"
        headers["Importance"] = "high"
    data = with_routing_headers(message.raw, headers)
    recipients = [target_address] if target_address else list(message.rcpt_tos)
    sender = deps.delivery_sender
    if target != "staff" and not deps.settings.delivery_url:
        sender = MaildirSender(deps.settings.delivered_dir / f".{target}")
    await sender.send(f"{message.id}.original", "", recipients, data)


async def send_reply(ctx: dict[str, Any], message_id: str) -> str:
    structlog.contextvars.bind_contextvars(message_id=message_id, job="reply")
    with timed(JOB_SECONDS, "reply"):
        return await _send(ctx["deps"], Reply, message_id, "reply")


async def deliver_original(ctx: dict[str, Any], message_id: str) -> str:
    structlog.contextvars.bind_contextvars(message_id=message_id, job="deliver")
    with timed(JOB_SECONDS, "deliver"):
        return await _send(ctx["deps"], Delivery, message_id, "delivery")


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Re-enqueue anything stuck: received but never processed, or replies/deliveries left pending."""
    deps: Deps = ctx["deps"]
    uncertain = await asyncio.to_thread(settle_uncertain_replies, deps.engine, deps.stale_sending)
    if uncertain:
        log.warning("sweep.uncertain_replies", count=uncertain)
    stuck = await asyncio.to_thread(
        find_stuck, deps.engine, timedelta(seconds=deps.settings.sweep_after_seconds), deps.stale_sending
    )
    pool = ctx["redis"]
    for message_id in stuck.received:
        await queue.enqueue(pool, queue.PROCESS, message_id)
    for message_id in stuck.replies:
        await queue.enqueue(pool, queue.SEND_REPLY, message_id)
    for message_id in stuck.deliveries:
        await queue.enqueue(pool, queue.DELIVER, message_id)
    counts = {"received": len(stuck.received), "replies": len(stuck.replies), "deliveries": len(stuck.deliveries)}
    if any(counts.values()):
        log.info("sweep.requeued", **counts)
    return counts


async def purge_expired(ctx: dict[str, Any]) -> dict[str, int]:
    """Daily retention run (arq cron); the same as `channelshift purge`."""
    deps: Deps = ctx["deps"]
    result = await asyncio.to_thread(purge, deps.engine, deps.settings.retention_days)
    log.info("purge.done", messages=result.messages, ledger_rows=result.ledger_rows, clicks=result.clicks)
    return {"messages": result.messages, "ledger_rows": result.ledger_rows, "clicks": result.clicks}

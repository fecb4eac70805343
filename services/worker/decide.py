"""process_message's first step: read the stored mail, decide it with the decision core, record the verdict."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.domain import Verdict
from services.store.decisions import Decided, Pending, message_to_decide, record_verdict, reply_message_id
from services.store.models import Message, Reply
from services.store.queries import release_untransmitted
from services.store.records import SendRecord
from services.store.uow import UnitOfWork
from services.worker.deps import Deps

log = structlog.get_logger(__name__)

# The reply's bytes for a message and verdict, or None if they cannot be built (the send then records why).
ReplyBuilder = Callable[[Message, Verdict, SendRecord], bytes | None]


@dataclass(frozen=True)
class Ready:
    """A new decision, and the reply's bytes when its row was written `transmitting`: to be sent at once."""

    decided: Decided
    reply_data: bytes | None


async def decide_message(
    deps: Deps, message_id: str, build_reply: ReplyBuilder | None = None
) -> Ready | Pending | None:
    """Idempotent: a message already decided returns its pending work instead of a second decision.

    With `build_reply`, a reply the verdict allows is built before the decision is written, so that the
    decision's transaction marks it transmitting too (instead of a transaction of its own before the send).
    """
    with Session(deps.engine) as session:
        read = message_to_decide(session, message_id)  # one indexed row
    if read is None:
        log.warning("process.unknown_message")
        return None
    if isinstance(read, Pending):
        return read
    message = read
    verdict = await deps.verdicts.verdict(message)
    reply_data = None
    if build_reply is not None and verdict.reply:
        record = SendRecord(
            Reply, message.id, 1, reply_message_id(deps.settings, message.id), verdict.in_reply_to, verdict.references
        )
        reply_data = build_reply(message, verdict, record)
    transmitting = reply_data is not None
    write = asyncio.ensure_future(
        deps.batcher.run(
            lambda uow: record_verdict(uow, deps.settings, message, verdict, reply_transmitting=transmitting)
        )
    )
    try:
        # shielded: if this job is stopped meanwhile, the decision is written all the same and must be known
        decided = await asyncio.shield(write)
    except IntegrityError:
        # A duplicate job decided the same message at the same moment; its decision stands.
        log.info("process.lost_race")
        return None
    except asyncio.CancelledError:
        await _release_after_stop(deps, write)
        raise
    if isinstance(decided, Pending):
        return decided
    log.info(
        "process.decided",
        category=verdict.category,
        rule=verdict.rule_id,
        language=verdict.language,
        reply=decided.verdict.reply,
        suppressed=decided.verdict.suppressed,
        priority=verdict.priority,
        ruleset=verdict.ruleset_version,
        path=verdict.path,
        defects=len(verdict.defects),
    )
    return Ready(decided, reply_data if decided.reply is not None else None)


async def _release_after_stop(deps: Deps, write: asyncio.Future[Decided | Pending]) -> None:
    """A job stopped while its decision was written gives back the claims it took: nothing was sent yet."""
    try:
        decided = await asyncio.shield(write)
    except Exception:
        return  # not written: nothing claimed
    if not isinstance(decided, Decided):
        return
    claims = [record for record in (decided.reply, decided.delivery) if record is not None]

    def release(uow: UnitOfWork) -> None:
        for record in claims:
            release_untransmitted(uow.session, record)

    await asyncio.shield(deps.batcher.run(release))
    log.info("process.released_after_stop", claims=len(claims))

"""process_message's first step: read the stored mail, decide it with the decision core, record the verdict."""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.store.decisions import Decided, Pending, message_to_decide, record_verdict
from services.worker.deps import Deps

log = structlog.get_logger(__name__)


async def decide_message(deps: Deps, message_id: str) -> Decided | Pending | None:
    """Idempotent: a message already decided returns its pending work instead of a second decision."""
    with Session(deps.engine) as session:
        read = message_to_decide(session, message_id)  # one indexed row
    if read is None:
        log.warning("process.unknown_message")
        return None
    if isinstance(read, Pending):
        return read
    message = read
    verdict = await deps.verdicts.verdict(message)
    try:
        decided = await deps.batcher.run(lambda uow: record_verdict(uow, deps.settings, message, verdict))
    except IntegrityError:
        # A duplicate job decided the same message at the same moment; its decision stands.
        log.info("process.lost_race")
        return None
    if isinstance(decided, Decided):
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
    return decided

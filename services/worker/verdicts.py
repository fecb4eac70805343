"""The worker's classification: concurrent jobs' mails decided together, off the event loop, within a limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from services.classify.engine import RuleSet
from services.domain import Envelope, Verdict
from services.mail import parse_mail
from services.reply.decide import decide_many, timed_out_verdict
from services.reply.policy import PolicyConfig
from services.store.batch import BatchWriter
from services.store.models import Message

log = structlog.get_logger(__name__)

# the intent model's features cost little more for 20 mails than for one (bench/README.md, eighth round)
MAX_BATCH = 20


def verdicts_of(ruleset: RuleSet, policy: PolicyConfig, key: bytes, messages: list[Message]) -> list[Verdict]:
    """The decision core on stored messages (parsed here, in the calling thread)."""
    items = [(parse_mail(m.raw or b""), Envelope(m.mail_from, tuple(m.rcpt_tos), m.received_at)) for m in messages]
    return decide_many(items, ruleset, policy, key)


class VerdictBatcher:
    """Whatever mails concurrent jobs bring while a batch is decided go into the next batch, up to MAX_BATCH.

    A batch runs in a thread with the per-mail limit: parsing is linear, regexes have their own timeout and
    the embedding model is C code that releases the GIL, so other jobs wait on the relay and Redis meanwhile.
    A batch past the limit is decided again mail by mail, so only the mail that is slow hits the limit; such a
    mail goes to staff flagged (`timed_out_verdict`) and is not retried. Its thread cannot be stopped and
    finishes in the background; its result is dropped.
    """

    def __init__(
        self, ruleset: Callable[[], RuleSet], policy: PolicyConfig, key: bytes, limit_seconds: Callable[[], float]
    ) -> None:
        self._ruleset = ruleset
        self._policy = policy
        self._key = key
        self._limit = limit_seconds
        self._writer: BatchWriter[Message, Verdict] = BatchWriter(self._decide, max_batch=MAX_BATCH)

    async def verdict(self, message: Message) -> Verdict:
        return await self._writer.submit(message)

    async def _decide(self, messages: list[Message]) -> list[Verdict | BaseException]:
        ruleset = self._ruleset()  # one set for the whole batch, even if a reload lands meanwhile
        if len(messages) > 1:
            try:
                return list(await self._within_limit(ruleset, messages))
            except TimeoutError:
                pass  # one of them is slow: each alone, so only that one hits the limit
        return list(await asyncio.gather(*(self._decide_alone(ruleset, message) for message in messages)))

    async def _decide_alone(self, ruleset: RuleSet, message: Message) -> Verdict:
        try:
            [verdict] = await self._within_limit(ruleset, [message])
        except TimeoutError:
            log.warning("process.classify_timeout", limit_seconds=self._limit(), size=message.size)
            return timed_out_verdict(ruleset)
        return verdict

    async def _within_limit(self, ruleset: RuleSet, messages: list[Message]) -> list[Verdict]:
        work = asyncio.to_thread(verdicts_of, ruleset, self._policy, self._key, messages)
        return await asyncio.wait_for(work, timeout=self._limit())

    async def close(self) -> None:
        await self._writer.close()

"""A process job carries a batch of mails: each decided on its own, a failing one holds nobody up, and a
reply is marked transmitting by its decision's own transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlmodel import Session

from services import queue
from services.domain import Verdict
from services.store.models import Delivery, JobState, Message, MessageState, Reply
from services.store.queries import opened_messages
from services.worker.jobs import process_message, sweep
from tests.support import Pipeline, make_mail


def _messages(pipeline: Pipeline) -> list[Message]:
    with Session(pipeline.deps.engine) as session:
        return opened_messages(session)


async def _store(pipeline: Pipeline, count: int) -> list[str]:
    for number in range(count):
        sender = f"citizen{number}@example.org"
        await pipeline.send(make_mail(subject="Öffnungszeiten", body="Wann haben Sie geöffnet?", sender=sender), sender)
    await pipeline.handlers[0].drain()
    return [message.id for message in _messages(pipeline)]


async def test_a_failing_mail_does_not_hold_up_its_batch_mates(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await _store(pipeline, 3)
    poison = ids[1]
    decide = pipeline.deps.verdicts.verdict

    async def verdict(message: Message) -> Verdict:
        if message.id == poison:
            raise RuntimeError("classifier broke on this one")
        return await decide(message)

    monkeypatch.setattr(pipeline.deps.verdicts, "verdict", verdict)
    ctx = {"deps": pipeline.deps, "redis": pipeline.pool}
    with pytest.raises(RuntimeError):  # the job reports the failure (arq logs it) ...
        await process_message(ctx, ids)
    # ... after its batch-mates were decided, answered and handed to staff
    states = {message.id: message.state for message in _messages(pipeline)}
    assert states == {ids[0]: MessageState.DELIVERED, poison: MessageState.RECEIVED, ids[2]: MessageState.DELIVERED}
    assert len(pipeline.relay.received) == 2 and len(pipeline.delivery.received) == 2
    # the batch run again (a retry, or the sweep's job for the poison mail) decides only what is left
    monkeypatch.undo()
    assert await process_message(ctx, ids) == "decided 3"
    assert {message.state for message in _messages(pipeline)} == {MessageState.DELIVERED}
    assert (await sweep(ctx, everything=True))["received"] == 0
    assert len(pipeline.relay.received) == 3 and len(pipeline.delivery.received) == 3


async def test_the_sweep_queues_a_stuck_mail_as_its_own_job(pipeline: Pipeline) -> None:
    [stored] = await _store(pipeline, 1)
    await pipeline.pool.flushdb()  # the gateway's job lost (a Redis without persistence restarted)
    ctx = {"deps": pipeline.deps, "redis": pipeline.pool}
    assert (await sweep(ctx, everything=True))["received"] == 1
    assert (await sweep(ctx, everything=True))["received"] == 1
    assert await pipeline.pool.zrange(queue.QUEUE_NAME, 0, -1) == [queue.job_id(queue.PROCESS, stored).encode()]
    await pipeline.work()
    assert len(pipeline.relay.received) == 1 and _messages(pipeline)[0].state == MessageState.DELIVERED


async def test_a_reply_needs_no_transaction_of_its_own_before_it_is_sent(pipeline: Pipeline) -> None:
    """Decision (reply marked transmitting), the reply's outcome, the delivery's outcome: three writes, not four."""
    [stored] = await _store(pipeline, 1)
    works: list[Callable[[Session], object]] = []
    run = pipeline.deps.batcher.run

    async def counted(work: Callable[[Session], Any]) -> Any:
        works.append(work)
        return await run(work)

    pipeline.deps.batcher.run = counted  # type: ignore[method-assign]
    ctx = {"deps": pipeline.deps, "redis": pipeline.pool}
    assert await process_message(ctx, [stored]) == "decided"
    assert len(works) == 3
    assert len(pipeline.relay.received) == 1 and _messages(pipeline)[0].state == MessageState.DELIVERED
    with Session(pipeline.deps.engine) as session:
        reply = session.get(Reply, stored)
        assert reply is not None and reply.state == JobState.SENT and reply.attempts == 1


async def test_a_job_stopped_while_its_decision_is_written_gives_its_claims_back(pipeline: Pipeline) -> None:
    """The reply was written transmitting, but nothing left: pending again, not settled as uncertain."""
    [stored] = await _store(pipeline, 1)
    written, gate = asyncio.Event(), asyncio.Event()
    run = pipeline.deps.batcher.run

    async def held_after_first_write(work: Callable[[Session], Any]) -> Any:
        result = await run(work)
        if not written.is_set():
            written.set()
            await gate.wait()
        return result

    pipeline.deps.batcher.run = held_after_first_write  # type: ignore[method-assign]
    ctx = {"deps": pipeline.deps, "redis": pipeline.pool}
    job = asyncio.create_task(process_message(ctx, [stored]))
    await asyncio.wait_for(written.wait(), 30)
    with Session(pipeline.deps.engine) as session:
        reply = session.get(Reply, stored)
        assert reply is not None and reply.state == JobState.TRANSMITTING
    job.cancel()
    await asyncio.sleep(0.1)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await job
    with Session(pipeline.deps.engine) as session:
        for model in (Reply, Delivery):
            row = session.get(model, stored)
            assert row is not None and (row.state, row.attempts, row.claimed_at) == (JobState.PENDING, 0, None)
    assert pipeline.relay.received == []
    # the next run sends both (send jobs, as for any decided mail with open work)
    pipeline.deps.batcher.run = run  # type: ignore[method-assign]
    assert await process_message(ctx, [stored]) == "decided"
    await pipeline.work()
    assert len(pipeline.relay.received) == 1 and len(pipeline.delivery.received) == 1

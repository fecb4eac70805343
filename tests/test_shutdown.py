"""Graceful stop in-process: the gateway answers 421 while open transactions finish; the worker drains."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix
from sqlmodel import Session, select

from services import queue
from services.gateway.server import OpenSessions, start_listener
from services.store.models import Delivery, JobState, Message, MessageState, Reply
from services.store.queries import claim
from services.worker.app import build_worker
from services.worker.jobs import sweep
from tests.support import SERVED, Pipeline, make_mail


async def _call(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def test_stopping_gateway_refuses_new_sessions_and_finishes_open_transactions(pipeline: Pipeline) -> None:
    sessions = OpenSessions()
    server = await start_listener(
        pipeline.handlers[0], "127.0.0.1:0", hostname="t", session_timeout=30, open_sessions=sessions
    )
    port = server.sockets[0].getsockname()[1]
    in_transaction = await _call(smtplib.SMTP, "127.0.0.1", port)
    idle = await _call(smtplib.SMTP, "127.0.0.1", port)
    try:
        await _call(in_transaction.ehlo)
        assert (await _call(in_transaction.mail, "citizen@example.org"))[0] == 250
        assert (await _call(in_transaction.rcpt, SERVED))[0] == 250
        await _call(idle.ehlo)

        closing = asyncio.create_task(sessions.close(10))
        await asyncio.sleep(0.1)
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            await _call(smtplib.SMTP, "127.0.0.1", port)
        assert refused.value.smtp_code == 421
        # the idle session was told 421 and closed: its next command cannot go through
        with pytest.raises(smtplib.SMTPServerDisconnected):
            code, _text = await _call(idle.noop)
            assert code == 421  # smtplib reads the 421 sent before the close, then the connection is gone
            await _call(idle.noop)
        assert not closing.done()  # still waiting for the open transaction
        code, text = await _call(in_transaction.data, make_mail(subject="Neue Adresse", body="Ich bin umgezogen."))
        assert code == 250 and b"queued as" in text
        assert await asyncio.wait_for(closing, 5) == 0  # nothing was still open at the end
        with pytest.raises(smtplib.SMTPServerDisconnected):
            await _call(in_transaction.noop)
            await _call(in_transaction.noop)
    finally:
        server.close()
        for client in (in_transaction, idle):
            client.close()
    await pipeline.handlers[0].drain()
    with Session(pipeline.deps.engine) as session:
        assert len(session.exec(select(Message)).all()) == 1


class SlowSink:
    """A relay that holds every DATA until `go` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.received = 0
        self.waiting = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.waiting += 1
        await self.go.wait()
        self.received += 1
        return "250 2.0.0 OK"


def _slow_relays(pipeline: Pipeline) -> tuple[SlowSink, SlowSink]:
    # aiosmtpd reads the hooks when a session starts: the sinks' next sessions use these
    reply_sink, delivery_sink = SlowSink(), SlowSink()
    pipeline.relay.handle_DATA = reply_sink.handle_DATA  # type: ignore[method-assign]
    pipeline.delivery.handle_DATA = delivery_sink.handle_DATA  # type: ignore[method-assign]
    return reply_sink, delivery_sink


async def _wait_until(predicate: Any, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_drain_lets_jobs_in_flight_finish(pipeline: Pipeline) -> None:
    reply_sink, delivery_sink = _slow_relays(pipeline)
    await pipeline.send(make_mail(subject="Öffnungszeiten", body="Wann haben Sie geöffnet?"))
    await pipeline.handlers[0].drain()
    worker = build_worker(pipeline.deps, pipeline.pool, handle_signals=False)
    main = asyncio.create_task(worker.main())
    try:
        await _wait_until(lambda: reply_sink.waiting and delivery_sink.waiting)
        [job_id] = [j for j in worker.tasks if j.startswith(queue.PROCESS)]
        # the in-progress key lives one lease, not arq's longest timeout of any function (the cron jobs' hour)
        ttl = await pipeline.pool.pttl(in_progress_key_prefix + job_id)
        assert 0 < ttl <= pipeline.deps.settings.stale_after_seconds * 1000
        draining = asyncio.create_task(worker.drain(10))
        await asyncio.sleep(0.3)
        assert not draining.done()
        reply_sink.go.set()
        delivery_sink.go.set()
        finished, cancelled = await asyncio.wait_for(draining, 10)
        assert finished >= 1 and cancelled == 0  # the process job (and a cron sweep, if one was running)
    finally:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
    [stored] = _messages(pipeline)
    assert stored.state == MessageState.DELIVERED
    with Session(pipeline.deps.engine) as session:
        reply = session.get(Reply, stored.id)
        assert reply is not None and reply.state == JobState.SENT
    assert (reply_sink.received, delivery_sink.received) == (1, 1)


async def test_drain_deadline_releases_claims_not_yet_transmitting(pipeline: Pipeline) -> None:
    reply_sink, delivery_sink = _slow_relays(pipeline)
    await pipeline.send(make_mail(subject="Öffnungszeiten", body="Wann haben Sie geöffnet?"))
    await pipeline.handlers[0].drain()
    worker = build_worker(pipeline.deps, pipeline.pool, handle_signals=False)
    main = asyncio.create_task(worker.main())
    try:
        await _wait_until(lambda: reply_sink.waiting and delivery_sink.waiting)
        _finished, cancelled = await worker.drain(0.5)
        assert cancelled >= 1
    finally:
        reply_sink.go.set()
        delivery_sink.go.set()
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
    [stored] = _messages(pipeline)
    with Session(pipeline.deps.engine) as session:
        reply = session.get(Reply, stored.id)
        delivery = session.get(Delivery, stored.id)
        assert reply is not None and delivery is not None
        # the reply had reached the relay: it stays transmitting (uncertain later), never offered again
        assert reply.state == JobState.TRANSMITTING
        # the delivery has no transmitting mark: back to pending, the attempt not counted
        assert delivery.state == JobState.PENDING and delivery.attempts == 0 and delivery.claimed_at is None
    # arq queued the cancelled job again without its in-progress key: the next worker runs it at once
    job_id = queue.job_id(queue.PROCESS, stored.id)
    assert await pipeline.pool.zscore(queue.QUEUE_NAME, job_id) is not None
    assert not await pipeline.pool.exists(in_progress_key_prefix + job_id)
    # the next worker delivers the original and leaves the reply alone
    pipeline.delivery.handle_DATA = type(pipeline.delivery).handle_DATA.__get__(pipeline.delivery)  # type: ignore[method-assign]
    pipeline.relay.handle_DATA = type(pipeline.relay).handle_DATA.__get__(pipeline.relay)  # type: ignore[method-assign]
    await pipeline.work()
    [final] = _messages(pipeline)
    assert final.state == MessageState.DELIVERED
    assert len(pipeline.delivery.received) == 1 and pipeline.relay.received == []


@pytest.mark.settings(stale_after_seconds=3)  # renewed every 0.6 s
async def test_running_worker_keeps_its_leases_past_the_stale_bound(pipeline: Pipeline) -> None:
    """The other side of a short lease: work of a live worker is never taken over, however long it takes."""
    reply_sink, delivery_sink = _slow_relays(pipeline)
    for number in range(2):  # two of each: renewed together (one executemany)
        sender = f"citizen{number}@example.org"
        await pipeline.send(make_mail(subject="Öffnungszeiten", body="Wann haben Sie geöffnet?", sender=sender), sender)
    await pipeline.handlers[0].drain()
    worker = build_worker(pipeline.deps, pipeline.pool, handle_signals=False)
    main = asyncio.create_task(worker.main())
    try:
        await _wait_until(lambda: reply_sink.waiting == 2 and delivery_sink.waiting == 2)
        stored = _messages(pipeline)
        await asyncio.sleep(4.5)  # longer than the lease: only renewals keep it
        for message in stored:
            assert await pipeline.pool.exists(in_progress_key_prefix + queue.job_id(queue.PROCESS, message.id))
        counts = await sweep({"deps": pipeline.deps, "redis": pipeline.pool})
        assert counts == {"received": 0, "replies": 0, "deliveries": 0}
        with Session(pipeline.deps.engine) as session:
            for message in stored:
                assert not claim(session, Delivery, message.id, pipeline.deps.stale_sending)
                reply = session.get(Reply, message.id)
                assert reply is not None and reply.state == JobState.TRANSMITTING  # not settled as uncertain
            session.rollback()
        reply_sink.go.set()
        delivery_sink.go.set()
        _finished, cancelled = await worker.drain(10)
        assert cancelled == 0
    finally:
        reply_sink.go.set()
        delivery_sink.go.set()
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
    assert [m.state for m in _messages(pipeline)] == [MessageState.DELIVERED] * 2
    assert (reply_sink.received, delivery_sink.received) == (2, 2)


def _messages(pipeline: Pipeline) -> list[Message]:
    with Session(pipeline.deps.engine) as session:
        return list(session.exec(select(Message)).all())

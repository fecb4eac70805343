"""Refused recipients are counted exactly, in the gateway's group commit together with the mails beside them."""

from __future__ import annotations

import asyncio
import smtplib
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select
from sqlmodel import Session, col

from services.gateway.commit import Count, GroupCommitter
from services.gateway.handler import new_message_row
from services.store.db import make_engine
from services.store.models import Counter, Message, utcnow
from tests.support import SERVED, Pipeline, make_mail, smtp_send

REFUSED = "rejected:unknown-recipient"
SENDER = "citizen@example.org"


def _refused_count(session: Session) -> int:
    total = session.execute(
        select(func.coalesce(func.sum(Counter.count), 0)).where(
            col(Counter.outcome) == REFUSED, col(Counter.mailbox) == "(unserved)"
        )
    ).scalar_one()
    return int(total)


async def test_every_refused_recipient_is_counted_once(pipeline: Pipeline) -> None:
    loop = asyncio.get_running_loop()
    # the clients' own threads: in asyncio's default pool they would take the threads the gateway writes with
    clients = ThreadPoolExecutor(max_workers=17)

    async def mixed(number: int) -> dict[str, tuple[int, bytes]]:
        recipients = [SERVED, f"a{number}@elsewhere.example", f"b{number}@elsewhere.example"]
        data = make_mail(body=f"Nachricht {number}")
        return await loop.run_in_executor(clients, smtp_send, pipeline.smtp_port, SENDER, recipients, data)

    async def refused_only(number: int) -> None:
        recipients = [f"c{number}@elsewhere.example"]
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            await loop.run_in_executor(clients, smtp_send, pipeline.smtp_port, SENDER, recipients, make_mail())

    answers = await asyncio.gather(*(mixed(n) for n in range(12)), *(refused_only(n) for n in range(5)))
    clients.shutdown()
    assert [len(refused) for refused in answers[:12]] == [2] * 12
    with Session(pipeline.deps.engine) as session:
        assert _refused_count(session) == 12 * 2 + 5
        assert session.execute(select(func.count()).select_from(Message)).scalar_one() == 12


async def test_counts_and_messages_waiting_together_share_one_transaction(clean_database: str) -> None:
    engine = make_engine(clean_database)
    commits: list[int] = []
    event.listen(engine, "commit", lambda _connection: commits.append(1))
    enqueued: list[str] = []

    async def enqueue(ids: list[str]) -> None:
        enqueued.extend(ids)

    committer = GroupCommitter(engine, enqueue)
    now = utcnow()
    refused = Count(hour=now, mailbox="(unserved)", category="(none)", channel="(none)", outcome=REFUSED)
    rows = [
        new_message_row(
            message_id=f"m{n}",
            received_at=now,
            protocol="smtp",
            mail_from="a@b.example",
            recipients=[SERVED],
            content=b"x",
        )
        for n in range(3)
    ]
    # submitted together: the writer task runs after all of them are queued, so they form one batch
    await asyncio.gather(committer.count(refused), *(committer.store(row) for row in rows), committer.count(refused))
    await committer.drain()
    await committer.close()
    assert len(commits) == 1
    assert sorted(enqueued) == ["m0", "m1", "m2"]
    with Session(engine) as session:
        assert _refused_count(session) == 2
        assert session.execute(select(func.count()).select_from(Message)).scalar_one() == 3
    engine.dispose()

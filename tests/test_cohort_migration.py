"""Migration 0005 books the clicks stored before it to their reply cohorts, once per reply, and 0003 undoes it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlmodel import Session

from services.store.db import make_engine
from services.store.migrate import downgrade, upgrade
from services.store.models import Counter, CounterDirtyHour, Decision, JobState, LinkClick, Message, Reply

RECEIVED = datetime(2026, 11, 3, 9, 41, tzinfo=UTC)


def _mail(session: Session, message_id: str, category: str, channel: str, reply_state: str) -> None:
    session.add(
        Message(
            id=message_id, received_at=RECEIVED, protocol="smtp", mail_from="", rcpt_tos=[], mailbox="info@x", size=1
        )
    )
    session.flush()  # no ORM relationships: the message row must exist before the rows that refer to it
    session.add(
        Decision(
            message_id=message_id,
            category=category,
            channel=channel,
            rule_id="r",
            ruleset_version="v",
            language="de",
            reply=True,
        )
    )
    session.add(Reply(message_id=message_id, state=reply_state, reply_message_id=f"<{message_id}@x>"))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own: this test migrates it up and down."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db.sqlite"
        return
    base = os.environ.get("CHANNELSHIFT_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PostgreSQL tests need CHANNELSHIFT_TEST_POSTGRES_URL")
    name = f"cs_migration_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield "postgresql+psycopg://" + base.split("://", 1)[1].rpartition("/")[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_clicks_stored_before_are_booked_to_their_cohort(empty_database: str) -> None:
    url = empty_database
    upgrade(url, "0003")
    engine = make_engine(url)
    later = RECEIVED + timedelta(days=2)
    with Session(engine) as session:
        _mail(session, "a" * 32, "general", "overview", JobState.SENT)
        _mail(session, "b" * 32, "documents", "upload", JobState.SENT)
        _mail(session, "c" * 32, "documents", "upload", JobState.UNCERTAIN)  # not in replies_sent: not counted
        session.flush()
        for token, message_id, channel in (
            ("t1", "a", "portal"),
            ("t2", "a", "upload"),
            ("t3", "b", "upload"),
            ("t4", "c", "upload"),
        ):
            session.add(LinkClick(token=token, message_id=message_id * 32, channel=channel, first_clicked_at=later))
        session.commit()
    upgrade(url, "head")
    with Session(engine) as session:
        rows = session.execute(
            select(Counter.category, Counter.channel, Counter.outcome, Counter.count, Counter.hour)
        ).all()
        dirty = list(session.execute(select(CounterDirtyHour.hour)).scalars())
    hour = RECEIVED.replace(minute=0)
    assert {row[:4] for row in rows} == {
        ("general", "overview", "reply-clicked", 1),
        ("general", "portal", "link-opened", 1),
        ("general", "upload", "link-opened", 1),
        ("documents", "upload", "reply-clicked", 1),
        ("documents", "upload", "link-opened", 1),
    }
    assert {row[4] for row in rows} == {hour} and dirty == [hour]
    downgrade(url, "0003")
    with Session(engine) as session:
        assert session.execute(select(Counter)).first() is None
    engine.dispose()

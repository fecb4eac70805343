"""The unit of work: counts and held-back inserts are written by session_scope just before commit, or not at all."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text
from sqlmodel import Session

from services.store.db import make_engine, session_scope
from services.store.models import Counter, CounterDirtyHour, LinkClick

HOUR = datetime(2026, 5, 4, 9, tzinfo=UTC)


def _counters(session: Session) -> list[tuple[str, str, int]]:
    rows = session.execute(select(Counter.mailbox, Counter.outcome, Counter.count).order_by(Counter.mailbox))
    return [(mailbox, outcome, count) for mailbox, outcome, count in rows]


def _click(token: str) -> dict[str, object]:
    return {"token": token, "message_id": "m", "channel": "portal", "first_clicked_at": HOUR, "clicks": 1}


def test_counts_are_summed_per_row_and_written_with_their_dirty_hours(clean_database: str) -> None:
    engine = make_engine(clean_database)
    with session_scope(engine) as uow:
        for mailbox, minute, amount in (("b@x", 5, 1), ("a@x", 10, 2), ("b@x", 59, 3)):
            uow.count(
                hour=HOUR.replace(minute=minute),
                mailbox=mailbox,
                category="general",
                channel="portal",
                outcome="received",
                amount=amount,
            )
        uow.count(hour=HOUR, mailbox="a@x", category="general", channel="portal", outcome="x" * 100)
        # held back until the commit: nothing is in the table yet
        assert _counters(uow.session) == []
    with session_scope(engine) as uow:
        uow.count(hour=HOUR, mailbox="a@x", category="general", channel="portal", outcome="received")
    with Session(engine) as session:
        assert sorted(_counters(session)) == [("a@x", "received", 3), ("a@x", "x" * 80, 1), ("b@x", "received", 4)]
        dirty = session.execute(select(CounterDirtyHour.hour, CounterDirtyHour.version)).all()
        assert [(hour.replace(tzinfo=UTC), version) for hour, version in dirty] == [(HOUR, 2)]
    engine.dispose()


def test_a_rolled_back_unit_of_work_writes_neither_counts_nor_later_inserts(clean_database: str) -> None:
    engine = make_engine(clean_database)
    with pytest.raises(ValueError), session_scope(engine) as uow:
        uow.count(hour=HOUR, mailbox="a@x", category="general", channel="portal", outcome="received")
        uow.insert_later(LinkClick, _click("t1"))
        raise ValueError("the work fails")
    with session_scope(engine) as uow:
        uow.insert_later(LinkClick, _click("t2"))
        uow.insert_later(LinkClick, _click("t3"))
        assert uow.session.execute(text("SELECT count(*) FROM link_click")).scalar_one() == 0
        uow.write_inserts()  # for a read that must see them
        assert uow.session.execute(text("SELECT count(*) FROM link_click")).scalar_one() == 2
    with Session(engine) as session:
        assert _counters(session) == []
        assert session.execute(select(CounterDirtyHour.hour)).all() == []
        assert sorted(session.execute(text("SELECT token FROM link_click")).scalars()) == ["t2", "t3"]
    engine.dispose()

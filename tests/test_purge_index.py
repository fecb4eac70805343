"""Purge reads only rows still to purge (ix_message_unpurged) and, batch after batch, purges exactly those."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlmodel import Session, col

from services.store import purge as purge_module
from services.store.db import make_engine
from services.store.models import Message, MessageState

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def _message(state: str, age_days: int, purged: bool = False) -> Message:
    received = NOW - timedelta(days=age_days)
    return Message(
        id=uuid.uuid4().hex,
        received_at=received,
        updated_at=received,
        protocol="smtp",
        mail_from="sealed",
        rcpt_tos=[],
        mailbox="info@example.org",
        size=1,
        raw=b"sealed",
        state=state,
        purged_at=received if purged else None,
    )


def test_batches_purge_every_old_final_row_and_nothing_else(
    clean_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(purge_module, "BATCH", 7)  # many batches out of few rows
    engine = make_engine(clean_database)
    due = [_message(MessageState.DELIVERED, 40) for _ in range(20)]
    due += [_message(MessageState.HELD, 50) for _ in range(9)]
    kept = [
        _message(MessageState.DELIVERED, 3),  # within retention
        _message(MessageState.FAILED, 40),  # needs a person: never purged
        _message(MessageState.CLASSIFIED, 40),  # in flight
    ]
    history = [_message(MessageState.DELIVERED, 90, purged=True) for _ in range(10)]
    expected = {m.id for m in due + history}
    with Session(engine) as session:
        session.add_all([*due, *kept, *history])
        session.commit()
    assert purge_module.purge(engine, 30, now=NOW).messages == 29
    with Session(engine) as session:
        purged = set(session.execute(select(col(Message.id)).where(col(Message.purged_at).is_not(None))).scalars())
    assert purged == expected
    assert purge_module.purge(engine, 30, now=NOW).messages == 0
    engine.dispose()


def test_the_purge_query_reads_the_unpurged_index(clean_database: str) -> None:
    """A planner that could read purged rows through ix_message_state_received must prefer the partial index."""
    engine = make_engine(clean_database)
    cutoff = NOW - timedelta(days=30)
    query = (
        select(col(Message.id))
        .where(
            col(Message.received_at) < cutoff,
            col(Message.state).in_(MessageState.FINAL),
            col(Message.purged_at).is_(None),
        )
        .order_by(col(Message.state), col(Message.received_at))
        .limit(purge_module.BATCH)
    )
    compiled = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(row[-1]) for row in connection.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
        else:
            # an empty table is read sequentially whatever its indexes; without that choice, the cheaper index
            connection.execute(text("SET enable_seqscan = off"))
            plan = " ".join(str(row[0]) for row in connection.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_message_unpurged" in plan
    engine.dispose()

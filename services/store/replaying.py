"""Stored messages with their decisions, oldest first, in batches: what `replay` decides again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from services.store.models import Decision, Message
from services.store.queries import opened_messages


def decided_batches(
    engine: Engine, since: datetime, until: datetime | None, size: int
) -> Iterator[list[tuple[Message, Decision]]]:
    """Opened messages received in [since, until) with their decisions, `size` at a time (keyset pagination)."""
    last_id = ""
    last_time = since
    while True:
        with Session(engine) as session:
            window: list[Any] = [
                (col(Message.received_at) > last_time)
                | ((col(Message.received_at) == last_time) & (col(Message.id) > last_id))
            ]
            if until is not None:
                window.append(col(Message.received_at) < until)
            messages = opened_messages(session, *window, limit=size)
            ids = [message.id for message in messages]
            decisions = {
                d.message_id: d for d in session.exec(select(Decision).where(col(Decision.message_id).in_(ids)))
            }
            session.expunge_all()
        if not messages:
            return
        yield [(message, decisions[message.id]) for message in messages if message.id in decisions]
        last_time, last_id = messages[-1].received_at, messages[-1].id

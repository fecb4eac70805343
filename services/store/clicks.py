"""Counting link clicks: a token's first click (its reply's cohort, once) and every click, in one batch."""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col

from services.domain import Outcome
from services.store.cohort import count_first_open
from services.store.db import session_scope
from services.store.models import Decision, LinkClick, Message

_LINKS: Table = LinkClick.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Click:
    token: str  # canonical (services.links.read_token accepted it), so one string per reply and channel
    message_id: str
    channel: str
    at: datetime


def record_clicks(engine: Engine, clicks: list[Click]) -> None:
    """One transaction for a batch: a token's first click inserts its row (unique), every click bumps `click`."""
    per_token = Tally(click.token for click in clicks)
    first = {click.token: click for click in reversed(clicks)}  # earliest click of each token
    insert: Any = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(_LINKS)
    with session_scope(engine) as uow:
        session = uow.session
        ids = sorted({click.message_id for click in clicks})
        facts = {
            message_id: (category, mailbox, reply_channel, received_at)
            for message_id, category, mailbox, reply_channel, received_at in session.execute(
                select(
                    col(Decision.message_id),
                    col(Decision.category),
                    col(Message.mailbox),
                    col(Decision.channel),
                    col(Message.received_at),
                )
                .join(Message, col(Message.id) == col(Decision.message_id))
                .where(col(Decision.message_id).in_(ids))
            )
        }
        for token in sorted(per_token):  # key order, so concurrent web processes lock rows alike
            click, count = first[token], per_token[token]
            if click.message_id not in facts:
                continue  # purged or never decided: nothing to count it under
            category, mailbox, reply_channel, received_at = facts[click.message_id]
            values = {
                "token": token[:64],
                "message_id": click.message_id,
                "channel": click.channel,
                "first_clicked_at": click.at,
                "clicks": count,
            }
            # RETURNING tells whether this insert made the row; rowcount does not on every driver
            created = session.execute(
                insert.values(**values).on_conflict_do_nothing(index_elements=["token"]).returning(_LINKS.c.token)
            ).first()
            if created is not None:
                unique = 1
                count_first_open(
                    uow,
                    message_id=click.message_id,
                    received_at=received_at,
                    mailbox=mailbox,
                    category=category,
                    reply_channel=reply_channel,
                    link_channel=click.channel,
                )
            else:
                session.execute(
                    update(_LINKS).where(_LINKS.c.token == token[:64]).values(clicks=_LINKS.c.clicks + count)
                )
                unique = 0
            for outcome, amount in ((Outcome.CLICK, count), (Outcome.CLICK_UNIQUE, unique)):
                if amount:
                    uow.count(
                        hour=click.at,
                        mailbox=mailbox,
                        category=category,
                        channel=click.channel,
                        outcome=outcome,
                        amount=amount,
                    )

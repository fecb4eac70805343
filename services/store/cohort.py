"""Click cohort counters: a reply's opened links counted in the hour its mail arrived, like the reply itself."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlmodel import col

from services.domain import Outcome
from services.store.models import JobState, LinkClick, Reply
from services.store.uow import UnitOfWork


def count_first_open(
    uow: UnitOfWork,
    *,
    message_id: str,
    received_at: datetime,
    mailbox: str,
    category: str,
    reply_channel: str,
    link_channel: str,
) -> None:
    """In the transaction that inserted a token's first `link_click` row: book it to the reply's cohort.

    Counted under the same hour, mailbox, category and channel as the reply's `reply-sent`, so that per
    counter row `reply-clicked <= reply-sent` holds and every click-through stays within 0..100 %:
    `link-opened` once per reply and link channel (under the channel clicked), `reply-clicked` once per reply
    (under the channel the reply steered to - a `general` reply's clicks count towards `overview`).
    Only replies in state `sent` count, as only they are in `reply-sent`.
    """
    # the row lock serialises first clicks of one reply's links: of two at once, only one sees itself alone
    state = uow.session.execute(
        select(col(Reply.state)).where(col(Reply.message_id) == message_id).with_for_update()
    ).scalar_one_or_none()
    if state != JobState.SENT:
        return
    opened = uow.session.execute(
        select(func.count()).select_from(LinkClick).where(col(LinkClick.message_id) == message_id)
    ).scalar_one()

    def count(channel: str, outcome: str) -> None:
        uow.count(hour=received_at, mailbox=mailbox, category=category, channel=channel, outcome=outcome)

    count(link_channel, Outcome.LINK_OPENED)
    if opened == 1:
        count(reply_channel, Outcome.REPLY_CLICKED)

"""GET /r/<token>: count the click (and, once, for the reply's cohort), then redirect to the channel's current URL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.classify.reload import RuleSetHolder
from services.links import read_token
from services.store.cohort import count_first_open
from services.store.db import session_scope
from services.store.models import Decision, LinkClick, Message, utcnow
from services.store.queries import bump_counter

log = structlog.get_logger(__name__)
FALLBACK_CHANNEL = "overview"


def record_click(engine: Engine, token: str, message_id: str, channel: str) -> None:
    """First click per token inserts a row (and counts as unique); every click bumps the click counter."""
    with Session(engine) as session:
        decision = session.get(Decision, message_id)
        message = session.get(Message, message_id)
        if decision is None or message is None:
            return
        category, mailbox = decision.category, message.mailbox
        reply_channel, received_at = decision.channel, message.received_at
    now = utcnow()

    def count(session: Session, outcome: str) -> None:
        bump_counter(session, hour=now, mailbox=mailbox, category=category, channel=channel, outcome=outcome)

    try:
        with session_scope(engine) as session:
            session.add(LinkClick(token=token[:64], message_id=message_id, channel=channel))
            session.flush()
            count(session, "click")
            count(session, "click-unique")
            count_first_open(
                session,
                message_id=message_id,
                received_at=received_at,
                mailbox=mailbox,
                category=category,
                reply_channel=reply_channel,
                link_channel=channel,
            )
        return
    except IntegrityError:
        pass
    with session_scope(engine) as session:
        row = session.get(LinkClick, token[:64])
        if row is not None:
            row.clicks += 1
            session.add(row)
        count(session, "click")


def make_redirect_handler(
    engine: Engine, rules: RuleSetHolder, secret: bytes
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def redirect(request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        channels = rules.current.settings.channels
        parsed = read_token(secret, token)
        channel = parsed[1] if parsed else FALLBACK_CHANNEL
        target = channels.get(channel) or channels.get(FALLBACK_CHANNEL)
        if target is None or not target.url:
            raise web.HTTPNotFound(text="unknown link")
        if parsed is not None and channel in channels:
            try:
                await asyncio.to_thread(record_click, engine, token, parsed[0], channel)
            except Exception as exc:  # counting must never keep a citizen from the portal
                log.warning("click.not_recorded", error=type(exc).__name__)
        raise web.HTTPFound(target.url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    return redirect

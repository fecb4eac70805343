"""GET /r/<token>: redirect to the channel's current URL at once; the click (and, once, its reply's cohort) is
counted later, in batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Counter
from sqlalchemy import Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col

from services.classify.reload import RuleSetHolder
from services.links import read_token
from services.metrics import PROCESS_REGISTRY
from services.store.cohort import count_first_open
from services.store.db import session_scope
from services.store.models import Decision, LinkClick, Message, utcnow
from services.store.queries import bump_counter

log = structlog.get_logger(__name__)
FALLBACK_CHANNEL = "overview"
BATCH_SIZE = 500

CLICKS_DROPPED = Counter(
    "channelshift_clicks_dropped",
    "Clicks not counted because this web process's click queue was full (the redirect still happened).",
    registry=PROCESS_REGISTRY,
)
CLICK_WRITE_FAILURES = Counter(
    "channelshift_click_write_failures",
    "Click batches this web process could not write to the database (their clicks are lost).",
    registry=PROCESS_REGISTRY,
)
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
    with session_scope(engine) as session:
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
                    session,
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
            for outcome, amount in (("click", count), ("click-unique", unique)):
                if amount:
                    bump_counter(
                        session,
                        hour=click.at,
                        mailbox=mailbox,
                        category=category,
                        channel=click.channel,
                        outcome=outcome,
                        amount=amount,
                    )


class ClickRecorder:
    """A bounded in-memory queue of clicks and the background task that writes them in batches.

    The redirect never waits for the database: a burst of /r/ hits costs one transaction per batch instead of
    one per hit, and when the queue is full a click is dropped and counted in a metric rather than slowing
    the citizen down or growing memory without bound.
    """

    def __init__(self, engine: Engine, max_queued: int, batch_size: int = BATCH_SIZE) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.queue: asyncio.Queue[Click] = asyncio.Queue(maxsize=max_queued)
        self._writing = asyncio.Lock()

    def add(self, click: Click) -> None:
        try:
            self.queue.put_nowait(click)
        except asyncio.QueueFull:
            CLICKS_DROPPED.inc()

    async def flush(self, *taken: Click) -> None:
        """Write everything queued so far (the writer task, app shutdown and tests call this)."""
        pending = list(taken)
        async with self._writing:  # one writer at a time keeps a token's insert before its updates
            while pending or not self.queue.empty():
                while len(pending) < self.batch_size and not self.queue.empty():
                    pending.append(self.queue.get_nowait())
                batch, pending = pending, []
                try:
                    await asyncio.to_thread(record_clicks, self.engine, batch)
                except Exception as exc:  # the database is down: these clicks are lost, the redirects happened
                    CLICK_WRITE_FAILURES.inc()
                    log.warning("clicks.not_recorded", clicks=len(batch), error=type(exc).__name__)

    async def run(self) -> None:
        while True:
            # what arrives while a batch is being written forms the next batch: no timer, no added latency
            write = asyncio.ensure_future(self.flush(await self.queue.get()))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write  # stopping: finish the batch in hand rather than abandon it in a thread
                raise

    async def cleanup_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.flush()


def make_redirect_handler(
    recorder: ClickRecorder, rules: RuleSetHolder, secret: bytes
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
            recorder.add(Click(token=token, message_id=parsed[0], channel=channel, at=utcnow()))
        raise web.HTTPFound(target.url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    return redirect

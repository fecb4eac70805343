"""GET /r/<token>: redirect to the channel's current URL at once; the click (and, once, its reply's cohort) is
counted later, in batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import Counter
from sqlalchemy import Engine

from services.domain import Channel
from services.links import read_token
from services.metrics import PROCESS_REGISTRY
from services.ruleset.reload import RuleSetHolder
from services.store.clicks import Click, record_clicks
from services.store.models import utcnow

log = structlog.get_logger(__name__)
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
        channel = parsed[1] if parsed else Channel.OVERVIEW
        target = channels.get(channel) or channels.get(Channel.OVERVIEW)
        if target is None or not target.url:
            raise web.HTTPNotFound(text="unknown link")
        if parsed is not None and channel in channels:
            recorder.add(Click(token=token, message_id=parsed[0], channel=channel, at=utcnow()))
        raise web.HTTPFound(target.url, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    return redirect

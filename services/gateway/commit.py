"""Group commit for the gateway: concurrent sessions' messages share one durable INSERT; each 250 waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import Engine

from services.store.batch import BatchWriter
from services.store.queries import store_messages
from services.store.uow import Counts

log = structlog.get_logger(__name__)

EnqueueBatch = Callable[[list[str]], Awaitable[None]]


@dataclass(frozen=True)
class Count:
    """One bump of an hourly counter (a refused recipient), committed with the messages waiting beside it."""

    hour: datetime
    mailbox: str
    category: str
    channel: str
    outcome: str


class GroupCommitter:
    """Messages (column dicts of the message table) waiting together are written with one executemany.

    Counts waiting with them go into the same transaction: a refused recipient costs no write transaction
    (and SQLite write lock) of its own. After each commit the batch's ids are handed to `enqueue` in one
    background task: the 250s do not wait for Redis (the mails are durable by then, and the sweep enqueues
    whatever this misses).
    """

    def __init__(self, engine: Engine, enqueue: EnqueueBatch) -> None:
        self._engine = engine
        self._enqueue = enqueue
        self._pending: set[asyncio.Task[None]] = set()
        self._writer: BatchWriter[dict[str, object] | Count, None] = BatchWriter(self._write)

    async def _write(self, items: list[dict[str, object] | Count]) -> list[BaseException | None]:
        rows = [item for item in items if isinstance(item, dict)]
        counts = Counts()
        for item in items:
            if isinstance(item, Count):
                counts.add(
                    hour=item.hour,
                    mailbox=item.mailbox,
                    category=item.category,
                    channel=item.channel,
                    outcome=item.outcome,
                )
        await asyncio.to_thread(store_messages, self._engine, rows, counts)
        if rows:
            task = asyncio.create_task(self._enqueue_quietly([str(row["id"]) for row in rows]))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        return [None] * len(items)

    async def _enqueue_quietly(self, message_ids: list[str]) -> None:
        try:
            await self._enqueue(message_ids)
        except Exception as exc:
            log.warning("gateway.enqueue_failed", error=type(exc).__name__, messages=len(message_ids))

    async def store(self, row: dict[str, object]) -> None:
        """Returns once the message is committed; raises what the commit raised (the caller answers 451)."""
        await self._writer.submit(row)

    async def count(self, count: Count) -> None:
        """Returns once the count is committed; raises what the commit raised."""
        await self._writer.submit(count)

    async def drain(self) -> None:
        """Wait for enqueues still in flight (at shutdown; the sweep would catch them anyway)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        await self._writer.close()

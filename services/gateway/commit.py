"""Group commit: concurrent sessions' messages share one durable transaction; each 250 waits for its commit."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import Engine

from services.store.models import Message
from services.store.queries import store_messages

MAX_BATCH = 256


class GroupCommitter:
    """One writer task: take whatever is waiting (up to MAX_BATCH), commit it in one transaction, wake all."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: asyncio.Queue[tuple[Message, asyncio.Future[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def store(self, message: Message) -> None:
        """Returns once the message is committed; raises what the commit raised (the caller answers 451)."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((message, future))
        await future

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await asyncio.to_thread(store_messages, self.engine, [message for message, _f in batch])
            except Exception as exc:
                for _message, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _message, future in batch:
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

"""Group commit: whatever concurrent callers submit while a write runs goes into the next single transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast

import structlog
from sqlalchemy import Engine

from services.store.db import session_scope
from services.store.uow import UnitOfWork

log = structlog.get_logger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
MAX_BATCH = 256


class BatchWriter(Generic[Item, Result]):
    """One writer task hands everything waiting (up to `max_batch`) to `write` and wakes each caller.

    `write` (a coroutine; see `in_thread` for blocking code) returns one result or exception per item, in
    order; if it raises, every caller of that batch gets the exception. Callers wait for their own outcome, so
    nothing is acknowledged before it is written.
    """

    def __init__(
        self, write: Callable[[list[Item]], Awaitable[list[Result | BaseException]]], *, max_batch: int = MAX_BATCH
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        if self._writer is not None and self._writer.get_loop() is not asyncio.get_running_loop():
            # a queue belongs to its event loop: one used from a new loop starts afresh
            self._queue = asyncio.Queue()
            self._writer = None
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever())
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self._write([item for item, _future in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"batch write returned {len(outcomes)} outcomes for {len(batch)} items")
            except Exception as exc:
                outcomes = [exc] * len(batch)
            for (_item, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue  # the caller was cancelled; its write happened (or failed) all the same
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            # not kept while waiting for the next item: a batch can hold megabytes (the gateway's raw mails)
            del batch, outcomes

    async def close(self) -> None:
        if self._writer is not None and self._writer.get_loop() is asyncio.get_running_loop():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


def in_thread(
    write: Callable[[list[Item]], list[Result | BaseException]],
) -> Callable[[list[Item]], Awaitable[list[Result | BaseException]]]:
    """A blocking batch write (database work) run in a worker thread."""

    async def run(items: list[Item]) -> list[Result | BaseException]:
        return await asyncio.to_thread(write, items)

    return run


Work = Callable[[UnitOfWork], object]


def run_together(engine: Engine, works: list[Work]) -> list[object | BaseException]:
    """All works in one transaction; if that fails, each in its own, so one bad item cannot fail the others."""
    if len(works) > 1:
        try:
            with session_scope(engine) as uow:
                return [work(uow) for work in works]
        except Exception as exc:
            # the one-by-one pass below reports each item's own error; this line shows how often batches fail
            log.info("batch.retried_one_by_one", works=len(works), error=type(exc).__name__)
    outcomes: list[object | BaseException] = []
    for work in works:
        outcome: object | BaseException
        try:
            with session_scope(engine) as uow:
                outcome = work(uow)
        except Exception as exc:  # from the work or from its commit (rows and counters are written then)
            outcome = exc
        outcomes.append(outcome)
    return outcomes


class TransactionBatcher:
    """Runs `work(uow)` callables from many concurrent jobs in shared transactions (one commit per batch).

    A work must do only database work in its unit of work and be safe to run again after a rollback.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 64) -> None:
        self._writer: BatchWriter[Work, object] = BatchWriter(
            in_thread(lambda works: run_together(engine, works)), max_batch=max_batch
        )

    async def run(self, work: Callable[[UnitOfWork], Result]) -> Result:
        return cast(Result, await self._writer.submit(work))

    async def close(self) -> None:
        await self._writer.close()

"""Group commit for the gateway: concurrent sessions' messages share one durable INSERT; each 250 waits for it."""

from __future__ import annotations

from sqlalchemy import Engine

from services.store.batch import BatchWriter, in_thread
from services.store.queries import store_messages


class GroupCommitter:
    """Messages (column dicts of the message table) waiting together are written with one executemany."""

    def __init__(self, engine: Engine) -> None:
        self._writer: BatchWriter[dict[str, object], None] = BatchWriter(
            in_thread(lambda rows: self._store(engine, rows))
        )

    @staticmethod
    def _store(engine: Engine, rows: list[dict[str, object]]) -> list[BaseException | None]:
        store_messages(engine, rows)
        return [None] * len(rows)

    async def store(self, row: dict[str, object]) -> None:
        """Returns once the message is committed; raises what the commit raised (the caller answers 451)."""
        await self._writer.submit(row)

    async def close(self) -> None:
        await self._writer.close()

"""Group commit helpers: concurrent callers share writes, each gets its own outcome, one bad item fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.store.batch import BatchWriter, TransactionBatcher, run_together
from services.store.db import make_engine
from services.store.migrate import upgrade
from services.store.models import LinkClick, utcnow
from services.store.uow import UnitOfWork


async def test_concurrent_submits_share_writes_and_get_their_own_results() -> None:
    batches: list[list[int]] = []

    async def write(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [item * 10 for item in items]

    writer: BatchWriter[int, int] = BatchWriter(write)
    results = await asyncio.gather(*(writer.submit(n) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    assert len(batches) < 10 and sorted(n for batch in batches for n in batch) == list(range(50))
    await writer.close()


async def test_a_failed_write_fails_its_callers_and_the_writer_goes_on() -> None:
    calls = 0

    async def write(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        if calls == 2:
            return []  # a broken write function: the wrong number of outcomes
        return [ValueError("bad") if item == 3 else item for item in items]

    writer: BatchWriter[int, int] = BatchWriter(write)
    with pytest.raises(OSError):
        await writer.submit(1)
    with pytest.raises(RuntimeError):
        await writer.submit(2)
    assert await writer.submit(4) == 4
    with pytest.raises(ValueError):
        await writer.submit(3)
    await writer.close()


async def test_one_failing_work_does_not_undo_the_others(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/batch.db")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))

    def insert(number: int) -> Callable[[UnitOfWork], int]:
        def work(uow: UnitOfWork) -> int:
            uow.session.execute(text("INSERT INTO item (id) VALUES (:n)"), {"n": number})
            return number

        return work

    outcomes = run_together(engine, [insert(1), insert(2), insert(1), insert(3)])
    assert outcomes[:2] == [1, 2] and outcomes[3] == 3 and isinstance(outcomes[2], IntegrityError)
    batcher = TransactionBatcher(engine)
    assert await asyncio.gather(*(batcher.run(insert(n)) for n in (4, 5))) == [4, 5]
    with engine.connect() as connection:
        assert [row[0] for row in connection.execute(text("SELECT id FROM item ORDER BY id"))] == [1, 2, 3, 4, 5]
    await batcher.close()
    engine.dispose()


NOW = utcnow()


async def test_rows_held_for_the_commit_are_written_once_and_blamed_on_their_own_work(tmp_path: Path) -> None:
    """insert_later: one executemany at commit; a row that fails there fails only the work that held it."""
    url = f"sqlite:///{tmp_path}/deferred.db"
    upgrade(url)
    engine = make_engine(url)

    def click(number: int) -> dict[str, object]:
        # link_click: a table of ours without foreign keys, its token the primary key
        return {"token": str(number), "message_id": "m", "channel": "portal", "first_clicked_at": NOW, "clicks": 1}

    def count(uow: UnitOfWork) -> int:
        return int(uow.session.execute(text("SELECT count(*) FROM link_click")).scalar_one())

    def hold(number: int) -> Callable[[UnitOfWork], int]:
        def work(uow: UnitOfWork) -> int:
            uow.insert_later(LinkClick, click(number))
            return count(uow)  # held back: not yet in the table

        return work

    assert run_together(engine, [hold(1), hold(2)]) == [0, 0]
    outcomes = run_together(engine, [hold(3), hold(1), hold(4)])
    assert outcomes[0] == 2 and outcomes[2] == 3 and isinstance(outcomes[1], IntegrityError)

    def hold_then_read(uow: UnitOfWork) -> int:
        uow.insert_later(LinkClick, click(5))
        uow.write_inserts()
        return count(uow)

    def hold_then_fail(uow: UnitOfWork) -> int:
        uow.insert_later(LinkClick, click(6))
        raise ValueError("the work fails after holding a row")

    assert run_together(engine, [hold_then_read]) == [5]
    assert isinstance(run_together(engine, [hold_then_fail])[0], ValueError)
    with engine.connect() as connection:
        tokens = [row[0] for row in connection.execute(text("SELECT token FROM link_click ORDER BY token"))]
    assert tokens == ["1", "2", "3", "4", "5"]
    engine.dispose()

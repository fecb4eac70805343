"""Engine and session helpers; SQLite gets WAL and a busy timeout so gateway and worker can share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlmodel import Session

from services.store.uow import UnitOfWork
from services.store.writelock import attach_write_lock, write_lock


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed message survives power loss, which is what our 250 promises.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            # deleted pages are zeroed, so a purged key or body is not left readable in the file
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        attach_write_lock(engine)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[UnitOfWork]:
    """A write transaction: commits on success, rolls back on any error; on SQLite it holds our writer lock.

    What the unit of work holds back (counts, later inserts) is written just before the commit.
    """
    with write_lock(engine), Session(engine, expire_on_commit=False) as session:
        uow = UnitOfWork(session)
        try:
            yield uow
            uow.write_pending()
            session.commit()
        except BaseException:
            session.rollback()
            uow.discard()
            raise


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))

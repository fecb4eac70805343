"""The unit of work of one write transaction: its session, plus the counts and inserts written just before commit."""

from __future__ import annotations

import collections
import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session, SQLModel

from services.store.models import Counter, CounterDirtyHour

COUNTER_KEYS = ("hour", "mailbox", "category", "channel", "outcome")
CounterKey = tuple[datetime, str, str, str, str]


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


class Counts:
    """Counter bumps summed per row, written as one upsert (rows in key order, so concurrent writers lock alike)."""

    def __init__(self) -> None:
        self._bumps: collections.Counter[CounterKey] = collections.Counter()

    def add(self, *, hour: datetime, mailbox: str, category: str, channel: str, outcome: str, amount: int = 1) -> None:
        self._bumps[(hour_of(hour), mailbox, category, channel, outcome[:80])] += amount

    def __bool__(self) -> bool:
        return bool(self._bumps)

    def write(self, connection: Connection | Session) -> None:
        """The upsert and the dirty-hour marks (the daily rollup rebuilds those days, services/store/rollup.py)."""
        if not self._bumps:
            return
        dialect = connection.get_bind().dialect.name if isinstance(connection, Session) else connection.dialect.name
        upsert, mark_dirty = _counter_upserts(dialect)
        bumps = sorted(self._bumps.items())
        connection.execute(upsert, [{**dict(zip(COUNTER_KEYS, key, strict=True)), "count": n} for key, n in bumps])
        connection.execute(mark_dirty, [{"hour": hour, "version": 1} for hour in sorted({key[0] for key, _ in bumps})])

    def clear(self) -> None:
        self._bumps.clear()


class UnitOfWork:
    """What `session_scope` yields: the transaction's `session`, and work held back until just before its commit.

    `count` bumps the hourly counters; `insert_later` holds a row back so that each table's rows of the
    transaction go in one executemany. `session_scope` writes both before it commits and drops them on
    rollback; nothing else writes them (no ORM event listeners).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._counts = Counts()
        self._later: dict[Table, list[dict[str, object]]] = {}

    def count(
        self, *, hour: datetime, mailbox: str, category: str, channel: str, outcome: str, amount: int = 1
    ) -> None:
        """Count in the hourly rollup (`hour` is rounded down, `outcome` cut to 80 characters)."""
        self._counts.add(hour=hour, mailbox=mailbox, category=category, channel=channel, outcome=outcome, amount=amount)

    def insert_later(self, model: type[SQLModel], values: dict[str, object]) -> None:
        """INSERT one row before the commit, with the same table's other rows of this transaction.

        For rows nothing in the transaction reads back before it commits (`write_inserts` for a read that
        must see them). Rows of one table must name the same columns.
        """
        self._later.setdefault(model.__table__, []).append(values)  # type: ignore[attr-defined]

    def write_inserts(self) -> None:
        """Write the rows `insert_later` holds back, now (before a read that must see them)."""
        later, self._later = self._later, {}
        for table, rows in later.items():
            self.session.execute(insert_into(table), rows)

    def write_pending(self) -> None:
        """The held-back inserts, then the counts: `session_scope` calls this just before commit."""
        self.write_inserts()
        self._counts.write(self.session)

    def discard(self) -> None:
        """After a rollback: what was held back belongs to the transaction that failed."""
        self._later = {}
        self._counts.clear()


@functools.cache
def insert_into(table: Table) -> Insert:
    """A plain INSERT of a table, built once (building a statement costs more than running it)."""
    return insert(table)


@functools.cache
def _counter_upserts(dialect: str) -> tuple[Insert, Insert]:
    """The counter upsert and the dirty-hour mark for one dialect (PostgreSQL and SQLite spell ON CONFLICT alike)."""
    counters = Counter.__table__  # type: ignore[attr-defined]
    dirty = CounterDirtyHour.__table__  # type: ignore[attr-defined]
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(counters)
    upsert = statement.on_conflict_do_update(
        index_elements=list(COUNTER_KEYS), set_={"count": counters.c.count + statement.excluded.count}
    )
    mark = module.insert(dirty)
    return upsert, mark.on_conflict_do_update(index_elements=["hour"], set_={"version": dirty.c.version + 1})

"""Daily counter rollup: local-day sums of the hourly counters, kept exact by rebuilding the days of changed hours.

Every transaction that bumps `counter` also marks its hours in `counter_dirty_hour` (version + 1). The rollup
job reads the marks first, then rebuilds the local days those hours fall on from `counter`, then deletes only
marks whose version it read, so a change that lands meanwhile stays marked. Readers use `counter_day` for days
without marks and `counter` for the rest (services/store/reports.py), so answers never lag behind the counters.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, delete, func, insert, select, update
from sqlmodel import Session, col

from services.store.db import session_scope
from services.store.models import Counter, CounterDay, CounterDirtyHour, RollupState, utcnow

DIMENSIONS = ("mailbox", "category", "channel", "outcome")
FULL_BUILD_CHUNK_DAYS = 31
UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class RollupResult:
    full_build: bool
    days: int


@functools.lru_cache(maxsize=100_000)
def local_day(hour: datetime, zone: ZoneInfo) -> date:
    """The local calendar day of a UTC hour (cached: rollup rows repeat the same hours many times over)."""
    return hour.astimezone(zone).date()


def utc_bounds(first: date, last: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the local days first..last."""
    begin = datetime.combine(first, time(0), zone).astimezone(UTC)
    finish = datetime.combine(last + timedelta(days=1), time(0), zone).astimezone(UTC)
    return begin, finish


def _rebuild(session: Session, zone: ZoneInfo, first: date, last: date) -> None:
    """Replace the daily rows of local days first..last by the sums of their hours."""
    begin, finish = utc_bounds(first, last, zone)
    counter = Counter.__table__  # type: ignore[attr-defined]
    rows = session.execute(
        select(counter.c.hour, *(counter.c[d] for d in DIMENSIONS), counter.c.count).where(
            counter.c.hour >= begin, counter.c.hour < finish
        )
    ).all()
    sums: dict[tuple[date, str, str, str, str], int] = defaultdict(int)
    for hour, mailbox, category, channel, outcome, count in rows:
        sums[(local_day(hour, zone), mailbox, category, channel, outcome)] += count
    daily = CounterDay.__table__  # type: ignore[attr-defined]
    session.execute(delete(daily).where(daily.c.zone == zone.key, daily.c.day >= first, daily.c.day <= last))
    if sums:
        session.execute(
            insert(daily),
            [
                {"zone": zone.key, "day": key[0], **dict(zip(DIMENSIONS, key[1:], strict=True)), "count": count}
                for key, count in sums.items()
            ],
        )


def _take_lock(session: Session) -> None:
    # A write first: SQLite then holds its write lock for the whole transaction, so the marks and hours read
    # below cannot change under us (on PostgreSQL the mark versions take care of that).
    state = RollupState.__table__  # type: ignore[attr-defined]
    session.execute(update(state).where(state.c.id == 1).values(built_at=utcnow()))


def _clear_marks(session: Session, marks: list[tuple[datetime, int]]) -> None:
    dirty = CounterDirtyHour.__table__  # type: ignore[attr-defined]
    for hour, version in marks:
        session.execute(delete(dirty).where(and_(dirty.c.hour == hour, dirty.c.version == version)))


def _marks(session: Session, limit: int | None = None) -> list[tuple[datetime, int]]:
    query = select(col(CounterDirtyHour.hour), col(CounterDirtyHour.version)).order_by(col(CounterDirtyHour.hour))
    if limit is not None:
        query = query.limit(limit)
    return [(hour, version) for hour, version in session.execute(query).all()]


def refresh_daily_rollup(engine: Engine, zone_name: str, *, max_marks: int = 2000) -> RollupResult:
    """Bring `counter_day` for `zone_name` up to date; a new zone (or none built yet) gets a full build."""
    zone = ZoneInfo(zone_name)
    with Session(engine) as session:
        state = session.get(RollupState, 1)
        built_zone = state.zone if state is not None else None
    if built_zone != zone_name:
        return RollupResult(full_build=True, days=_full_build(engine, zone))
    with session_scope(engine) as uow:
        _take_lock(uow.session)
        marks = _marks(uow.session, max_marks)
        days = sorted({local_day(hour, zone) for hour, _version in marks})
        for day in days:
            _rebuild(uow.session, zone, day, day)
        _clear_marks(uow.session, marks)
    return RollupResult(full_build=False, days=len(days))


def _full_build(engine: Engine, zone: ZoneInfo) -> int:
    """Build every day from the hourly counters in month-sized transactions (never one long write lock)."""
    with session_scope(engine) as uow:
        # readers fall back to the hourly counters until the build is complete
        uow.session.execute(delete(RollupState.__table__))  # type: ignore[attr-defined]
        uow.session.execute(delete(CounterDay.__table__))  # type: ignore[attr-defined]
        marks = _marks(uow.session)
        first_hour, last_hour = uow.session.execute(select(func.min(Counter.hour), func.max(Counter.hour))).one()
    days = 0
    if first_hour is not None and last_hour is not None:
        day, last_day = local_day(first_hour, zone), local_day(last_hour, zone)
        while day <= last_day:
            chunk_end = min(day + timedelta(days=FULL_BUILD_CHUNK_DAYS - 1), last_day)
            with session_scope(engine) as uow:
                _rebuild(uow.session, zone, day, chunk_end)
            days += (chunk_end - day).days + 1
            day = chunk_end + timedelta(days=1)
    with session_scope(engine) as uow:
        _clear_marks(uow.session, marks)
        uow.session.add(RollupState(id=1, zone=zone.key, built_at=utcnow()))
    return days

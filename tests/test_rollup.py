"""The daily counter rollup answers exactly like the hourly counters: full build, late changes, time-zone change."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from services.store import reports
from services.store.db import make_engine, session_scope
from services.store.models import CounterDay, CounterDirtyHour, RollupState
from services.store.rollup import _clear_marks, _marks, refresh_daily_rollup

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
Bump = tuple[datetime, str, str, str, str, int]


def _bump(engine: object, bumps: list[Bump]) -> None:
    with session_scope(engine) as uow:  # type: ignore[arg-type]
        for hour, mailbox, category, channel, outcome, amount in bumps:
            uow.count(hour=hour, mailbox=mailbox, category=category, channel=channel, outcome=outcome, amount=amount)


def _random_bumps(rng: random.Random, first: datetime, hours: int, count: int) -> list[Bump]:
    bumps = []
    for _ in range(count):
        # many around local midnight and across both 2026 DST changes (29 March, 25 October)
        hour = first + timedelta(hours=rng.choice([rng.randrange(hours), *(24 * d + 22 for d in range(hours // 24))]))
        bumps.append(
            (
                hour,
                rng.choice(["jc@a.example", "jc@b.example"]),
                rng.choice(["documents", "appointment", "general"]),
                rng.choice(["upload", "booking", "portal"]),
                rng.choice(["received", "replied", "suppressed:automated", "repeat-7d"]),
                rng.randrange(1, 4),
            )
        )
    return bumps


def _expected(bumps: list[Bump], period: reports.Period, by: str, outcome: str) -> dict[tuple[str, str], int]:
    index = {"mailbox": 1, "category": 2, "channel": 3}
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for bump in bumps:
        day = bump[0].astimezone(period.zone).date()
        matches = bump[4].startswith(outcome) if outcome.endswith(":") else bump[4] == outcome
        if period.start <= day <= period.end and matches:
            totals[(day.isoformat(), bump[index[by]] if by != "none" else "all")] += bump[5]
    return dict(totals)


def _actual(engine: object, period: reports.Period, by: str, outcome: str) -> dict[tuple[str, str], int]:
    rows = reports.volumes(engine, period, group_by="day", by=by, outcome=outcome)  # type: ignore[arg-type]
    return {(row["period"], row["key"]): row["count"] for row in rows}


def _check(engine: object, bumps: list[Bump], zone: ZoneInfo) -> None:
    for start, end in [(date(2026, 3, 20), date(2026, 4, 5)), (date(2026, 10, 20), date(2026, 11, 3))]:
        period = reports.Period(start, end, zone)
        for by, outcome in [("category", "received"), ("channel", "suppressed:"), ("none", "replied")]:
            assert _actual(engine, period, by, outcome) == _expected(bumps, period, by, outcome)
        summary = reports.summary(engine, period)  # type: ignore[arg-type]
        received = _expected(bumps, period, "category", "received")
        assert summary["received"] == sum(received.values())
        for category, figures in summary["by_category"].items():
            assert figures["received"] == sum(n for (_day, key), n in received.items() if key == category)


def test_daily_rollup_is_exact_through_late_changes_and_zone_changes(clean_database: str) -> None:
    engine = make_engine(clean_database)
    rng = random.Random(7)
    spring = datetime(2026, 3, 18, tzinfo=UTC)
    autumn = datetime(2026, 10, 18, tzinfo=UTC)
    bumps = _random_bumps(rng, spring, 24 * 20, 600) + _random_bumps(rng, autumn, 24 * 20, 600)
    for start in range(0, len(bumps), 100):
        _bump(engine, bumps[start : start + 100])
    _check(engine, bumps, BERLIN)  # nothing built yet: the hourly counters answer

    result = refresh_daily_rollup(engine, "Europe/Berlin")
    assert result.full_build and result.days >= 40
    with session_scope(engine) as uow:
        assert uow.session.get(RollupState, 1) is not None
        assert uow.session.execute(select(func.count()).select_from(CounterDirtyHour)).scalar_one() == 0
        daily_total = uow.session.execute(select(func.sum(CounterDay.count))).scalar_one()
    assert daily_total == sum(b[5] for b in bumps)
    _check(engine, bumps, BERLIN)

    # late changes (repeat senders, clicks) land in days already rolled up: exact before and after the refresh
    late = _random_bumps(rng, spring, 24 * 20, 50) + _random_bumps(rng, autumn, 24 * 20, 50)
    _bump(engine, late)
    bumps += late
    _check(engine, bumps, BERLIN)
    result = refresh_daily_rollup(engine, "Europe/Berlin")
    assert not result.full_build and 0 < result.days <= 40
    _check(engine, bumps, BERLIN)

    # a new time zone in the rule set: full build for it; the old zone's periods fall back to hourly counters
    assert refresh_daily_rollup(engine, "America/New_York").full_build
    _check(engine, bumps, NEW_YORK)
    _check(engine, bumps, BERLIN)
    engine.dispose()


def test_a_change_after_the_marks_were_read_stays_marked(clean_database: str) -> None:
    engine = make_engine(clean_database)
    hour = datetime(2026, 5, 4, 9, tzinfo=UTC)
    _bump(engine, [(hour, "jc@a.example", "general", "portal", "received", 1)])
    with session_scope(engine) as uow:
        read = _marks(uow.session)
    _bump(engine, [(hour, "jc@a.example", "general", "portal", "received", 1)])  # lands while the rollup runs
    with session_scope(engine) as uow:
        _clear_marks(uow.session, read)
    with session_scope(engine) as uow:
        assert [h for h, _v in _marks(uow.session)] == [hour]
    engine.dispose()

"""Read side for dashboards: volumes and summaries from the daily and hourly counter rollups (never messages)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Engine, Table, and_, func, or_, select
from sqlmodel import Session, col

from services.domain import REJECTED_PREFIX, SUPPRESSED_PREFIX, Outcome
from services.store.models import Counter, CounterDay, CounterDirtyHour, RollupState
from services.store.rollup import local_day, utc_bounds

# the API names its enums after these (services/web/schemas.py, openapi.py)
GroupBy = Literal["day", "week", "month"]
By = Literal["none", "mailbox", "category", "channel", "outcome"]
GROUP_BY: tuple[GroupBy, ...] = get_args(GroupBy)
BY: tuple[By, ...] = get_args(By)


@dataclass(frozen=True)
class Period:
    """Local calendar days [start, end] inclusive, in the rule set's time zone."""

    start: date
    end: date
    zone: ZoneInfo

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def bucket_of(day: date, group_by: str) -> str:
    if group_by == "day":
        return day.isoformat()
    if group_by == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year}-{day.month:02d}"


def _conditions(table: Table, outcome: str | None, filters: dict[str, str]) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if outcome is not None:
        column = table.c.outcome
        conditions.append(column.startswith(outcome) if outcome.endswith(":") else column == outcome)
    conditions.extend(table.c[name] == value for name, value in filters.items())
    return conditions


def _day_ranges(days: set[date]) -> list[tuple[date, date]]:
    ranges: list[tuple[date, date]] = []
    for day in sorted(days):
        if ranges and ranges[-1][1] + timedelta(days=1) == day:
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def counts_per_day(
    engine: Engine,
    period: Period,
    keys: tuple[str, ...],
    *,
    outcome: str | None = None,
    filters: dict[str, str] | None = None,
    per_day: bool = True,
) -> dict[tuple[Any, ...], int]:
    """Sums per (local day, *keys) over the period, or per keys alone without `per_day`.

    Days the daily rollup holds for this zone and no changed hour touches are read from `counter_day`; all
    other days from the hourly `counter` (services/store/rollup.py), so the answer is always exact.
    """
    zone, filters = period.zone, filters or {}
    hourly_ranges = [(period.start, period.end)]
    totals: dict[tuple[Any, ...], int] = defaultdict(int)
    with Session(engine) as session:
        state = session.get(RollupState, 1)
        if state is not None and state.zone == zone.key:
            changed = {local_day(hour, zone) for hour in session.execute(select(col(CounterDirtyHour.hour))).scalars()}
            changed = {day for day in changed if period.start <= day <= period.end}
            hourly_ranges = _day_ranges(changed)
            daily = CounterDay.__table__  # type: ignore[attr-defined]
            columns = [daily.c.day] if per_day else []
            columns += [daily.c[k] for k in keys]
            query = (
                select(*columns, func.sum(daily.c.count))
                .where(daily.c.zone == zone.key, daily.c.day >= period.start, daily.c.day <= period.end)
                .where(*_conditions(daily, outcome, filters))
                .group_by(*columns)
            )
            if changed:
                query = query.where(daily.c.day.not_in(sorted(changed)))
            for row in session.execute(query).all():
                totals[tuple(row[:-1])] += int(row[-1])
        if hourly_ranges:
            hourly = Counter.__table__  # type: ignore[attr-defined]
            columns = [hourly.c.hour] if per_day else []
            columns += [hourly.c[k] for k in keys]
            spans = [utc_bounds(first, last, zone) for first, last in hourly_ranges]
            query = (
                select(*columns, func.sum(hourly.c.count))
                .where(or_(*(and_(hourly.c.hour >= begin, hourly.c.hour < finish) for begin, finish in spans)))
                .where(*_conditions(hourly, outcome, filters))
                .group_by(*columns)
            )
            for row in session.execute(query).all():
                key = (local_day(row[0], zone), *row[1:-1]) if per_day else tuple(row[:-1])
                totals[key] += int(row[-1])
    return totals


def volumes(
    engine: Engine,
    period: Period,
    *,
    group_by: str = "day",
    by: str = "category",
    outcome: str = Outcome.RECEIVED,
    filters: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Counts per period bucket and key. `outcome` is a counter outcome, or a prefix ending in ':'."""
    keys = (by,) if by != "none" else ()
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for (day, *key), count in counts_per_day(engine, period, keys, outcome=outcome, filters=filters).items():
        totals[(bucket_of(day, group_by), str(key[0]) if key else "all")] += count
    return [{"period": p, "key": k, "count": n} for (p, k), n in sorted(totals.items())]


REPLY_SENT_WITH_LINK = "reply-sent-with-link"  # derived here, not a counter: `reply-sent` minus unlinked categories


def _by_outcome(
    engine: Engine, period: Period, unlinked: frozenset[str]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Outcome counts per category and per channel, from one scan."""
    categories: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    channels: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    keys = ("category", "channel", "outcome")
    for (category, channel, outcome), count in counts_per_day(engine, period, keys, per_day=False).items():
        categories[str(category)][str(outcome)] += count
        channels[str(channel)][str(outcome)] += count
        if outcome == Outcome.REPLY_SENT and category not in unlinked:
            categories[str(category)][REPLY_SENT_WITH_LINK] += count
            channels[str(channel)][REPLY_SENT_WITH_LINK] += count
    return categories, channels


def counter_totals(engine: Engine) -> list[tuple[str, str, str, int]]:
    """(category, channel, outcome, total) over the whole hourly counter table: what /metrics exports."""
    query = select(col(Counter.category), col(Counter.channel), col(Counter.outcome), func.sum(Counter.count)).group_by(
        col(Counter.category), col(Counter.channel), col(Counter.outcome)
    )
    with Session(engine) as session:
        return [(str(a), str(b), str(c), int(d)) for a, b, c, d in session.execute(query).all()]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def figures(outcomes: dict[str, int]) -> dict[str, Any]:
    """The numbers of one group; docs/metrics.md defines each (keep both in step)."""
    received = outcomes.get(Outcome.RECEIVED, 0)
    replied = outcomes.get(Outcome.REPLIED, 0)
    sent = outcomes.get(Outcome.REPLY_SENT, 0)
    with_link = outcomes.get(REPLY_SENT_WITH_LINK, 0)
    # clamped although the counters cannot exceed it (services/store/cohort.py): a share is never above 100 %
    clicked = min(outcomes.get(Outcome.REPLY_CLICKED, 0), with_link)
    return {
        "received": received,
        "replied": replied,
        "reply_rate": _ratio(replied, received),
        "suppressed": sum(n for o, n in outcomes.items() if o.startswith(SUPPRESSED_PREFIX)),
        "no_reply": outcomes.get(Outcome.NO_REPLY, 0),
        "held": outcomes.get(Outcome.HELD, 0),
        "replies_sent": sent,
        "replies_failed": outcomes.get(Outcome.REPLY_FAILED, 0),
        "replies_uncertain": outcomes.get(Outcome.REPLY_UNCERTAIN, 0),
        "delivered": outcomes.get(Outcome.DELIVERED, 0),
        "deliveries_failed": outcomes.get(Outcome.DELIVERY_FAILED, 0),
        "repeat_7d": outcomes.get(Outcome.REPEAT_7D, 0),
        "repeat_30d": outcomes.get(Outcome.REPEAT_30D, 0),
        "repeat_rate_7d": _ratio(outcomes.get(Outcome.REPEAT_7D, 0), replied),
        "repeat_rate_30d": _ratio(outcomes.get(Outcome.REPEAT_30D, 0), replied),
        "replies_with_link": with_link,
        "replies_clicked": clicked,
        "click_through": _ratio(clicked, with_link),
        "links_opened": outcomes.get(Outcome.LINK_OPENED, 0),
        "clicks": outcomes.get(Outcome.CLICK, 0),
    }


# the keys figures() writes, and the per-day rates summary() adds to every group (the API schema reads both)
FIGURE_NAMES: tuple[str, ...] = tuple(figures({}))
PER_DAY_FIELDS = ("received_per_day", "received_per_working_day")
# the numbers compare() gives a relative change for
COMPARED: tuple[str, ...] = (
    "received",
    "received_per_day",
    "received_per_working_day",
    "replied",
    "reply_rate",
    "replies_sent",
    "repeat_rate_7d",
    "repeat_rate_30d",
    "click_through",
)


def working_days(period: Period) -> list[date]:
    """Monday to Friday in the period (public holidays are not known here)."""
    return [day for day in (period.start + timedelta(days=i) for i in range(period.days)) if day.weekday() < 5]


def summary(engine: Engine, period: Period, unlinked: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The numbers of docs/metrics.md; `unlinked`: categories whose replies carry no link (no click-through)."""
    by_category, by_channel = _by_outcome(engine, period, unlinked)
    # every counter row has a category (SMTP rejections "(none)"), so the totals are the categories' sums
    overall: dict[str, int] = defaultdict(int)
    for outcomes in by_category.values():
        for outcome, total in outcomes.items():
            overall[outcome] += total
    result = figures(overall)
    result["period"] = {"from": period.start.isoformat(), "to": period.end.isoformat(), "days": period.days}
    workdays = set(working_days(period))
    daily = counts_per_day(engine, period, ("category", "channel"), outcome=Outcome.RECEIVED)
    on_workdays: dict[tuple[str, str], int] = defaultdict(int)
    for (day, category, channel), count in daily.items():
        if day in workdays:
            on_workdays[("category", str(category))] += count
            on_workdays[("channel", str(channel))] += count
            on_workdays[("all", "all")] += count

    def per_day(group: dict[str, Any], key: tuple[str, str]) -> None:
        group["received_per_day"] = round(group["received"] / period.days, 2)
        group["received_per_working_day"] = round(on_workdays[key] / len(workdays), 2) if workdays else None

    per_day(result, ("all", "all"))
    result["working_days"] = len(workdays)
    result["suppressed_by_reason"] = {
        o.removeprefix(SUPPRESSED_PREFIX): n for o, n in sorted(overall.items()) if o.startswith(SUPPRESSED_PREFIX)
    }
    result["rejected_at_smtp"] = {
        o.removeprefix(REJECTED_PREFIX): n for o, n in sorted(overall.items()) if o.startswith(REJECTED_PREFIX)
    }
    result["by_category"] = {
        name: figures(outcomes) for name, outcomes in sorted(by_category.items()) if not name.startswith("(")
    }
    result["by_channel"] = {
        name: figures(outcomes) for name, outcomes in sorted(by_channel.items()) if not name.startswith("(")
    }
    for by in ("category", "channel"):
        for name, group in result[f"by_{by}"].items():
            per_day(group, (by, name))
    return result


def compare(engine: Engine, before: Period, after: Period, unlinked: frozenset[str] = frozenset()) -> dict[str, Any]:
    first, second = summary(engine, before, unlinked), summary(engine, after, unlinked)

    def change(key: str) -> float | None:
        a, b = first[key], second[key]
        if not a or b is None:
            return None
        return round((float(b) - float(a)) / float(a), 4)

    return {
        "before": first,
        "after": second,
        "change": {key: change(key) for key in COMPARED},
    }

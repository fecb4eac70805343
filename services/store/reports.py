"""Read side for dashboards: volumes and summaries from the hourly counter rollup (never the message table)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from services.store.models import Counter

GROUP_BY = ("day", "week", "month")
BY = ("none", "mailbox", "category", "channel", "outcome")


@dataclass(frozen=True)
class Period:
    """Local calendar days [start, end] inclusive, in the rule set's time zone."""

    start: date
    end: date
    zone: ZoneInfo

    @property
    def utc_range(self) -> tuple[datetime, datetime]:
        begin = datetime.combine(self.start, time(0), self.zone)
        finish = datetime.combine(self.end + timedelta(days=1), time(0), self.zone)
        return begin.astimezone(ZoneInfo("UTC")), finish.astimezone(ZoneInfo("UTC"))

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def bucket_of(moment: datetime, zone: ZoneInfo, group_by: str) -> str:
    local = moment.astimezone(zone).date()
    if group_by == "day":
        return local.isoformat()
    if group_by == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{local.year}-{local.month:02d}"


def volumes(
    engine: Engine,
    period: Period,
    *,
    group_by: str = "day",
    by: str = "category",
    outcome: str = "received",
    filters: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Counts per period bucket and key. `outcome` is a counter outcome, or a prefix ending in ':'."""
    begin, finish = period.utc_range
    columns: list[Any] = [col(Counter.hour)]
    if by != "none":
        columns.append(getattr(Counter, by))
    query = (
        select(*columns, func.sum(Counter.count))
        .where(col(Counter.hour) >= begin, col(Counter.hour) < finish)
        .group_by(*columns)
    )
    if outcome.endswith(":"):
        query = query.where(col(Counter.outcome).startswith(outcome))
    else:
        query = query.where(col(Counter.outcome) == outcome)
    for name, value in (filters or {}).items():
        query = query.where(col(getattr(Counter, name)) == value)
    totals: dict[tuple[str, str], int] = defaultdict(int)
    with Session(engine) as session:
        for row in session.execute(query).all():
            values = tuple(row)
            key = str(values[1]) if by != "none" else "all"
            totals[(bucket_of(values[0], period.zone, group_by), key)] += int(values[-1])
    return [{"period": p, "key": k, "count": n} for (p, k), n in sorted(totals.items())]


def _by_outcome(engine: Engine, period: Period, dimension: str) -> dict[str, dict[str, int]]:
    begin, finish = period.utc_range
    key = getattr(Counter, dimension)
    query = (
        select(key, col(Counter.outcome), func.sum(Counter.count))
        .where(col(Counter.hour) >= begin, col(Counter.hour) < finish)
        .group_by(key, col(Counter.outcome))
    )
    result: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with Session(engine) as session:
        for name, outcome, total in session.execute(query).all():
            result[str(name)][str(outcome)] += int(total)
    return result


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _figures(outcomes: dict[str, int]) -> dict[str, Any]:
    received = outcomes.get("received", 0)
    replied = outcomes.get("replied", 0)
    sent = outcomes.get("reply-sent", 0)
    return {
        "received": received,
        "replied": replied,
        "reply_rate": _ratio(replied, received),
        "suppressed": sum(n for o, n in outcomes.items() if o.startswith("suppressed:")),
        "no_reply": outcomes.get("no-reply", 0),
        "held": outcomes.get("held", 0),
        "replies_sent": sent,
        "replies_failed": outcomes.get("reply-failed", 0),
        "replies_uncertain": outcomes.get("reply-uncertain", 0),
        "delivered": outcomes.get("delivered", 0),
        "deliveries_failed": outcomes.get("delivery-failed", 0),
        "repeat_7d": outcomes.get("repeat-7d", 0),
        "repeat_30d": outcomes.get("repeat-30d", 0),
        "repeat_rate_7d": _ratio(outcomes.get("repeat-7d", 0), replied),
        "repeat_rate_30d": _ratio(outcomes.get("repeat-30d", 0), replied),
        "clicks": outcomes.get("click", 0),
        "unique_clicks": outcomes.get("click-unique", 0),
        "click_through": _ratio(outcomes.get("click-unique", 0), sent),
    }


def summary(engine: Engine, period: Period) -> dict[str, Any]:
    by_category = _by_outcome(engine, period, "category")
    # every counter row has a category (SMTP rejections "(none)"), so the totals are the categories' sums
    overall: dict[str, int] = defaultdict(int)
    for outcomes in by_category.values():
        for outcome, total in outcomes.items():
            overall[outcome] += total
    figures = _figures(overall)
    figures["period"] = {"from": period.start.isoformat(), "to": period.end.isoformat(), "days": period.days}
    figures["received_per_day"] = round(figures["received"] / period.days, 2)
    figures["suppressed_by_reason"] = {
        o.split(":", 1)[1]: n for o, n in sorted(overall.items()) if o.startswith("suppressed:")
    }
    figures["rejected_at_smtp"] = {
        o.split(":", 1)[1]: n for o, n in sorted(overall.items()) if o.startswith("rejected:")
    }
    figures["by_category"] = {
        name: _figures(outcomes) for name, outcomes in sorted(by_category.items()) if not name.startswith("(")
    }
    figures["by_channel"] = {
        name: _figures(outcomes)
        for name, outcomes in sorted(_by_outcome(engine, period, "channel").items())
        if not name.startswith("(")
    }
    return figures


def compare(engine: Engine, before: Period, after: Period) -> dict[str, Any]:
    first, second = summary(engine, before), summary(engine, after)

    def change(key: str) -> float | None:
        a, b = first[key], second[key]
        if not a or b is None:
            return None
        return round((float(b) - float(a)) / float(a), 4)

    return {
        "before": first,
        "after": second,
        "change": {
            key: change(key)
            for key in ("received_per_day", "reply_rate", "repeat_rate_7d", "repeat_rate_30d", "click_through")
        },
    }

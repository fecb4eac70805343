"""Opening hours at a given moment: open now, the next opening, and the weekly hours written in a language."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_interval, get_datetime_format, get_day_names
from babel.lists import format_list

from services.classify.schema import OpeningHours, Week

# a year of holidays cannot hide every opening; beyond that the hours are wrong, not the search short
_SEARCH_DAYS = 400
# babel's "short" time is 12-hour in English; citizens in Germany read the office's 24-hour times
_TIME_SUFFIX = {"de": " Uhr"}


@dataclass(frozen=True)
class OfficeStatus:
    """A channel's state at one moment (local time): open or not, and when it next opens."""

    open_now: bool
    next_opening: datetime | None


def _minutes(moment: datetime) -> int:
    return moment.hour * 60 + moment.minute


def office_status(hours: OpeningHours, holidays: Iterable[date], zone: ZoneInfo, now: datetime) -> OfficeStatus:
    """Open at `now`? And the next start of opening hours after `now` (None if none within a year).

    `now` is passed in (the time a mail was received), so a render never reads a clock of its own.
    """
    closed = frozenset(holidays)
    week = hours.week
    local = now.astimezone(zone)
    today = local.date()
    minute = _minutes(local)
    open_now = today not in closed and any(start <= minute < end for start, end in week[today.weekday()])
    for offset in range(_SEARCH_DAYS):
        day = today + timedelta(days=offset)
        if day in closed:
            continue
        for start, _end in week[day.weekday()]:
            if offset == 0 and start <= minute:
                continue
            opening = datetime.combine(day, time(start // 60, start % 60), tzinfo=zone)
            return OfficeStatus(open_now, opening)
    return OfficeStatus(open_now, None)


def format_moment(moment: datetime, language: str) -> str:
    """'Mittwoch, 2. Dezember 2026, 08:00 Uhr' / 'Wednesday, December 2, 2026, 08:00' in the reply language."""
    day = format_date(moment.date(), "full", locale=language)
    clock = f"{moment.hour:02d}:{moment.minute:02d}{_TIME_SUFFIX.get(language, '')}"
    pattern = str(get_datetime_format("full", locale=language)).replace("'", "")
    return pattern.replace("{1}", day).replace("{0}", clock)


def _interval(start: int, end: int, language: str) -> str:
    begin = time(start // 60, start % 60)
    # 24:00 is not a time of day: the interval ends at midnight, shown as 24:00 the way offices write it
    if end >= 24 * 60:
        text = format_interval(begin, time(23, 59), "Hm", locale=language)
        return str(text).replace("23:59", "24:00")
    return str(format_interval(begin, time(end // 60, end % 60), "Hm", locale=language))


def format_week(week: Week, language: str) -> str:
    """The weekly hours, days with equal times joined to ranges: 'Mo.–Fr. 08:00–12:00 Uhr; Do. ...'."""
    names = get_day_names("abbreviated", locale=language)
    groups: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
    for day, intervals in enumerate(week):
        if not intervals:
            continue
        if groups and groups[-1][1] == day - 1 and groups[-1][2] == intervals:
            groups[-1] = (groups[-1][0], day, intervals)
        else:
            groups.append((day, day, intervals))
    parts = []
    for first, last, intervals in groups:
        days = str(names[first]) if first == last else f"{names[first]}–{names[last]}"
        times = format_list([_interval(start, end, language) for start, end in intervals], locale=language)
        parts.append(f"{days} {times}")
    return "; ".join(parts)

"""`time:`: the mail arrived on one of these weekdays, inside an HH:MM-HH:MM window, not on a holiday."""

from __future__ import annotations

import re
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator

from services.classify.conditions.base import Check, ConditionKind, Context, Strict, leaf
from services.classify.facts import MailFacts

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# the name under which the loader passes settings.holidays to `time:` conditions that name no list of their own
# (no list file can have it: list names are file stems without '@')
SETTINGS_HOLIDAYS = "@settings.holidays"


class TimeMatch(Strict):
    """Working time: weekdays (mon..sun), an HH:MM-HH:MM window, not on holidays; local time zone."""

    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)
    hours: str | None = None
    holidays: str | None = Field(
        default=None, description="a list of dates (lists/<name>.txt) instead of settings.holidays"
    )
    timezone: str = "Europe/Berlin"

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d", value):
            raise ValueError("hours must look like 08:00-18:00")
        return value


def _compile(spec: TimeMatch, path: str, context: Context) -> Check:
    zone = ZoneInfo(spec.timezone)
    holidays = set(context.lists.get(spec.holidays or SETTINGS_HOLIDAYS, ()))
    start, _, end = (spec.hours or "").partition("-")

    def explain(facts: MailFacts) -> tuple[bool, str]:
        local = facts.received_at.astimezone(zone)
        ok = local.date().isoformat() not in holidays
        if ok and spec.weekdays:
            ok = _WEEKDAYS[local.weekday()] in spec.weekdays
        if ok and spec.hours:
            ok = start <= local.strftime("%H:%M") < end
        return ok, local.strftime("%a %H:%M")

    return leaf(path + ".time", lambda facts: explain(facts)[0], explain)


def _lists(spec: TimeMatch) -> list[str]:
    return [spec.holidays] if spec.holidays else []


KIND: ConditionKind[TimeMatch] = ConditionKind(key="time", schema=TimeMatch, compile=_compile, lists=_lists)

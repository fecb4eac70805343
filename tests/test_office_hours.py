"""Office hours as data: open now, next opening and localized hours at a fixed clock, and the replies that use them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.classify.schema import ChannelInfo, OpeningHours
from services.config import PROJECT_ROOT
from services.domain import REPLY_LANGUAGES
from services.reply.hours import format_moment, format_week, office_status
from services.reply.render import ReplyRenderer
from services.ruleset.loader import load_rules

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates", with_model=False)
SETTINGS = RULESET.settings
RENDERER = ReplyRenderer(PROJECT_ROOT / "templates")
BERLIN = ZoneInfo("Europe/Berlin")
LANGUAGES = list(REPLY_LANGUAGES)


def berlin(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A fixed clock, given in Berlin time and handed on in UTC (as received_at is stored)."""
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


TUESDAY_10 = berlin(2026, 12, 1, 10)
TUESDAY_1930 = berlin(2026, 12, 1, 19, 30)
SATURDAY = berlin(2026, 12, 5, 11)
CHRISTMAS = berlin(2026, 12, 25, 10)  # a Friday and a holiday in the shipped settings

# (clock, emergency walk-in open?, its next opening in Berlin time)
CLOCKS = [
    (TUESDAY_10, True, datetime(2026, 12, 2, 8, tzinfo=BERLIN)),
    (TUESDAY_1930, False, datetime(2026, 12, 2, 8, tzinfo=BERLIN)),
    (SATURDAY, False, datetime(2026, 12, 7, 8, tzinfo=BERLIN)),
    (CHRISTMAS, False, datetime(2026, 12, 28, 8, tzinfo=BERLIN)),
]


def _emergency_hours() -> OpeningHours:
    hours = SETTINGS.channels["emergency"].hours
    assert hours is not None
    return hours


@pytest.mark.parametrize(("now", "is_open", "opening"), CLOCKS)
def test_office_status_at_a_fixed_clock(now: datetime, is_open: bool, opening: datetime) -> None:
    status = office_status(_emergency_hours(), SETTINGS.holidays, BERLIN, now)
    assert status.open_now is is_open
    assert status.next_opening == opening


def test_a_weekday_holiday_closes_the_office() -> None:
    status = office_status(_emergency_hours(), [date(2026, 12, 1)], BERLIN, TUESDAY_10)
    assert status.open_now is False and status.next_opening == datetime(2026, 12, 2, 8, tzinfo=BERLIN)
    assert office_status(_emergency_hours(), [], BERLIN, TUESDAY_10).open_now is True


def test_opening_boundaries_and_a_day_in_several_entries() -> None:
    hours = OpeningHours({"mon-fri": "08:00-12:00", "thu": "14:00-24:00"})
    thursday = datetime(2026, 12, 3, tzinfo=BERLIN)
    assert office_status(hours, [], BERLIN, thursday.replace(hour=8)).open_now is True
    assert office_status(hours, [], BERLIN, thursday.replace(hour=12)).open_now is False  # the end is exclusive
    assert office_status(hours, [], BERLIN, thursday.replace(hour=12)).next_opening == thursday.replace(hour=14)
    assert office_status(hours, [], BERLIN, thursday.replace(hour=23, minute=59)).open_now is True
    assert (
        format_week(hours.week, "de")
        == "Mo.–Mi. 08:00–12:00 Uhr; Do. 08:00–12:00 Uhr und 14:00–24:00 Uhr; Fr. 08:00–12:00 Uhr"
    )


def test_next_opening_across_the_change_to_summer_time() -> None:
    saturday = berlin(2026, 3, 28, 12)
    status = office_status(_emergency_hours(), [], BERLIN, saturday)
    assert status.next_opening == datetime(2026, 3, 30, 8, tzinfo=BERLIN)
    assert status.next_opening is not None and status.next_opening.utcoffset() == timedelta(hours=2)


def test_hours_and_next_opening_are_written_in_the_reply_language() -> None:
    in_person = SETTINGS.channels["in_person"].hours
    assert in_person is not None
    assert format_week(in_person.week, "de") == (
        "Mo.–Di. 08:00–12:00 Uhr; Do. 08:00–12:00 Uhr und 14:00–18:00 Uhr; Fr. 08:00–12:00 Uhr"
    )
    assert format_week(in_person.week, "en").startswith("Mon–Tue 08:00")
    assert "الاثنين" in format_week(in_person.week, "ar")
    wednesday = datetime(2026, 12, 2, 8, tzinfo=BERLIN)
    assert format_moment(wednesday, "de") == "Mittwoch, 2. Dezember 2026, 08:00 Uhr"
    assert format_moment(wednesday, "en") == "Wednesday, December 2, 2026, 08:00"
    assert "грудня" in format_moment(wednesday, "uk") and "декабря" in format_moment(wednesday, "ru")
    assert "Aralık" in format_moment(wednesday, "tr")


def _german_part(text: str) -> str:
    return text.rsplit("Deutsche Fassung (rechtlich verbindlich)", 1)[-1]


def test_emergency_reply_during_opening_hours_says_come_today() -> None:
    text = RENDERER.render("emergency", "de", SETTINGS, TUESDAY_10, reference="r").text
    assert "Kommen Sie heute persönlich vorbei" in text and "Mo.–Fr. 08:00–12:00 Uhr" in text
    assert "geschlossen" not in text
    assert "0800 111 0 111" in text and "112" in text  # the crisis line is there in any case


@pytest.mark.parametrize(
    ("now", "opening"),
    [
        (TUESDAY_1930, "Mittwoch, 2. Dezember 2026, 08:00 Uhr"),
        (SATURDAY, "Montag, 7. Dezember 2026, 08:00 Uhr"),
        (CHRISTMAS, "Montag, 28. Dezember 2026, 08:00 Uhr"),
    ],
)
def test_emergency_reply_outside_opening_hours_gives_24_hour_help_and_next_opening(now: datetime, opening: str) -> None:
    text = RENDERER.render("emergency", "de", SETTINGS, now, reference="r").text
    assert "heute persönlich" not in text and "Heute erhalten" not in text
    assert "Unser Büro ist jetzt geschlossen" in text
    assert "Notruf 112, Polizei 110" in text and "0800 111 0 111" in text
    assert f"Wir sind wieder für Sie da: {opening}." in text


@pytest.mark.parametrize("language", LANGUAGES)
def test_emergency_reply_after_hours_in_every_language(language: str) -> None:
    text = RENDERER.render("emergency", language, SETTINGS, TUESDAY_1930, reference="r").text
    own = text.split("-" * 60)[0]
    assert "112" in own and "110" in own and "0800 111 0 111" in own
    assert format_moment(datetime(2026, 12, 2, 8, tzinfo=BERLIN), language) in own
    assert "Mittwoch, 2. Dezember 2026, 08:00 Uhr" in _german_part(text)


def test_emergency_reply_names_the_municipal_service_when_configured() -> None:
    emergency = SETTINGS.channels["emergency"].model_dump(exclude_none=True)
    configured = ChannelInfo(**emergency, municipal_service="Sozialer Notdienst", municipal_phone="+49 0000 1111111")
    settings = SETTINGS.model_copy(update={"channels": {**SETTINGS.channels, "emergency": configured}})
    closed = RENDERER.render("emergency", "en", settings, SATURDAY, reference="r").text
    assert "- Sozialer Notdienst: +49 0000 1111111" in closed
    assert "Sozialer Notdienst" not in RENDERER.render("emergency", "en", SETTINGS, SATURDAY, reference="r").text


def test_appointment_reply_names_the_next_opening_for_same_day_cancellation() -> None:
    open_text = RENDERER.render("appointment", "de", SETTINGS, TUESDAY_10, reference="r").text
    assert "am selben Tag absagen" in open_text and "wieder:" not in open_text
    closed = RENDERER.render("appointment", "en", SETTINGS, TUESDAY_1930, reference="r").text
    assert "You can reach us by phone again: Wednesday, December 2, 2026, 08:00." in closed
    assert "Telefonisch erreichen Sie uns wieder: Mittwoch, 2. Dezember 2026, 08:00 Uhr." in _german_part(closed)

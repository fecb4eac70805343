"""The dashboard's default period around settings.cutover, its before/after split, and the page's number formats."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from aiohttp.test_utils import make_mocked_request

from services.ruleset.loader import load_rules
from services.web.dashboard import Dashboard, _buckets, default_view
from services.web.locale import PageLocale

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_rules(ROOT / "routing_rules", ROOT / "templates", with_model=False).settings


def test_default_view_spans_as_many_days_before_the_cutover_as_after() -> None:
    settings = SETTINGS.model_copy(update={"cutover": date(2026, 11, 1)})
    view = default_view(settings, date(2026, 12, 1))
    assert (view.before.start, view.before.end) == (date(2026, 10, 1), date(2026, 10, 31))
    assert (view.after.start, view.after.end) == (date(2026, 11, 1), date(2026, 12, 1))
    assert view.before.days == view.after.days == 31
    # no bucket of the weekly lines mixes both sides
    assert all(last < view.cutoff or first >= view.cutoff for first, last in _buckets(view))
    assert sum((last - first).days + 1 for first, last in _buckets(view)) == view.period.days
    # a cut-over in the future, or none: the last 30 days, halved
    for cutover in (None, date(2026, 12, 24)):
        later = default_view(settings.model_copy(update={"cutover": cutover}), date(2026, 12, 1))
        assert (later.period.start, later.period.end, later.cutoff) == (
            date(2026, 11, 2),
            date(2026, 12, 1),
            date(2026, 11, 17),
        )


def test_numbers_dates_and_names_follow_the_page_language() -> None:
    german, english = PageLocale.of("de", SETTINGS), PageLocale.of("en", SETTINGS)
    assert (german.number(1234.5, 1), german.percent(0.2467), german.change(-0.462)) == (
        "1.234,5",
        "24,7\u00a0%",
        "\u221246,2\u00a0%",
    )
    assert (english.number(1234.5, 1), english.percent(0.2467), english.change(0.03)) == ("1,234.5", "24.7%", "+3.0%")
    assert (german.day(date(2026, 12, 1)), english.day(date(2026, 12, 1))) == ("01.12.2026", "1 Dec 2026")
    assert german.percent(None) == german.change(None) == "–"
    assert (german.category("continued_benefits"), english.category("continued_benefits")) == (
        "Weiterbewilligung",
        "Continued benefits",
    )
    assert (german.channel("overview"), english.channel("none")) == ("Übersicht aller Wege", "not steered")
    assert PageLocale.of("fr", SETTINGS).language == "de" and german.category("unknown_thing") == "unknown_thing"


def test_a_cutoff_outside_the_chosen_period_splits_it_in_the_middle() -> None:
    dashboard = Dashboard.__new__(Dashboard)  # view() needs no engine, rule holder or templates
    settings = SETTINGS.model_copy(update={"cutover": date(2026, 11, 1)})
    inside = dashboard.view(make_mocked_request("GET", "/dashboard?from=2026-10-20&to=2026-11-09"), settings)
    assert inside.cutoff == date(2026, 11, 1) and inside.before.end == date(2026, 10, 31)
    for query in ("from=2026-11-10&to=2026-11-19", "from=2026-11-10&to=2026-11-19&cutoff=2026-11-10"):
        view = dashboard.view(make_mocked_request("GET", f"/dashboard?{query}"), settings)
        assert view.cutoff == date(2026, 11, 15) and view.before.days == view.after.days == 5

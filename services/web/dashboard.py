"""GET /dashboard: server-rendered page with the channel-shift charts; data embedded, chart library vendored."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from sqlalchemy import Engine

from services.classify.schema import RuleSettings
from services.domain import SUPPRESSED_PREFIX, Channel, Outcome
from services.ruleset.reload import RuleSetHolder
from services.store import reports
from services.store.rulesets import RuleSetStore
from services.web.api import DEFAULT_DAYS, _date, around_cutover, period_from
from services.web.auth import CSRF_FIELD, SESSION, Auth
from services.web.locale import PageLocale
from services.web.replylinks import unlinked_categories
from services.web.security import CSP_NONCE

STATIC_DIR = Path(__file__).resolve().parent / "static"
BUCKET_DAYS = 7
TEXTS: dict[str, dict[str, str]] = {
    "de": {
        "title": "E-Mail-Aufkommen und Kanalwechsel",
        "from": "von",
        "to": "bis",
        "cutoff": "Stichtag",
        "show": "Anzeigen",
        "other_language": "English",
        "before": "vorher",
        "after": "nachher",
        "change": "Veränderung",
        "per_working_day": "E-Mails pro Arbeitstag",
        "per_working_day_note": "Eingegangene E-Mails montags bis freitags, geteilt durch die Zahl dieser Tage.",
        "replies": "Lenkungsantworten",
        "replies_note": "Automatische Antworten, die auf Portal, Upload, Termin oder Telefon verweisen.",
        "repeat": "Schreiben binnen 7 Tagen erneut",
        "repeat_note": "Anteil der Lenkungsantworten, nach denen dieselbe Person binnen 7 Tagen wieder mailte"
        " (Pseudonym). Für die letzten 7 Tage vorläufig.",
        "click": "Öffnen den Link der Antwort",
        "click_note": "Anteil der gesendeten Antworten, deren Link mindestens einmal geöffnet wurde, auch später.",
        "held": "Zurückgehalten",
        "held_note": "Automatische Mails (Abwesenheitsnotizen, Newsletter, Zustellberichte): gespeichert, nicht"
        " beantwortet, nicht an Beschäftigte weitergeleitet.",
        "suppressed": "Antwort unterdrückt",
        "suppressed_note": "Keine Antwort, weil die Mail automatisch war oder die Person in den letzten 7 Tagen"
        " schon dieselbe Antwort bekam; die Mail geht trotzdem an die Beschäftigten.",
        "period_note": "{before} gegenüber {after}",
        "categories": "Anliegen vor und nach dem Stichtag",
        "category": "Anliegen",
        "mails_per_working_day": "E-Mails/Arbeitstag",
        "click_through": "Link geöffnet",
        "chart_daily": "E-Mails pro Tag, Quoten je Woche",
        "chart_daily_note": "Balken: E-Mails pro Tag (linke Achse). Linien: Link geöffnet und erneut geschrieben,"
        " je 7 Tage ab dem Stichtag (rechte Achse).",
        "chart_categories": "E-Mails pro Arbeitstag nach Anliegen",
        "chart_channels": "Link geöffnet nach Kanal",
        "chart_channels_note": "Kanal, auf den die Antwort lenkt; die Übersichtsantwort zählt bei „{overview}“.",
        "chart_repeat": "Erneut per E-Mail nach Lenkungsantwort",
        "chart_outcomes": "Beantwortet, unterdrückt, zurückgehalten",
        "mails": "E-Mails",
        "received": "eingegangen",
        "replied": "beantwortet",
        "repeat_7d": "binnen 7 Tagen",
        "repeat_30d": "binnen 30 Tagen",
        "empty_title": "Noch keine E-Mails in diesem Zeitraum",
        "empty_text": "Sobald das Gateway E-Mails annimmt, erscheinen hier die Zahlen. Eine erste Mail senden:",
        "empty_demo": "Oder Beispielverkehr über 60 Tage erzeugen:",
        "ruleset_marker": "Regelwerk",
        "markers_note": "Gestrichelte Linie: an diesem Tag wurde eine neue Regelwerk-Version aktiv.",
        "markers_link": "Versionen und Änderungen",
        "no_cutover": "Kein Stichtag gesetzt: settings.cutover im Regelwerk eintragen, um vorher und nachher"
        " zu vergleichen.",
    },
    "en": {
        "title": "E-mail volume and channel shift",
        "from": "from",
        "to": "to",
        "cutoff": "Cut-over",
        "show": "Show",
        "other_language": "Deutsch",
        "before": "before",
        "after": "after",
        "change": "Change",
        "per_working_day": "Mails per working day",
        "per_working_day_note": "Mails received Monday to Friday, divided by the number of those days.",
        "replies": "Steering replies",
        "replies_note": "Automatic replies that point to the portal, upload, appointment booking or phone.",
        "repeat": "Write again within 7 days",
        "repeat_note": "Share of steering replies after which the same person mailed again within 7 days"
        " (pseudonym). Provisional for the last 7 days.",
        "click": "Open the reply's link",
        "click_note": "Share of the replies sent whose link was opened at least once, also later.",
        "held": "Held",
        "held_note": "Automated mail (out-of-office, newsletters, delivery reports): stored, not answered, not"
        " passed to staff.",
        "suppressed": "Reply suppressed",
        "suppressed_note": "No reply because the mail was automated or the person got the same reply within the"
        " last 7 days; the mail still reaches staff.",
        "period_note": "{before} against {after}",
        "categories": "Topics before and after the cut-over",
        "category": "Topic",
        "mails_per_working_day": "Mails/working day",
        "click_through": "Link opened",
        "chart_daily": "Mails per day, shares per week",
        "chart_daily_note": "Bars: mails per day (left axis). Lines: link opened and wrote again, per 7 days from"
        " the cut-over (right axis).",
        "chart_categories": "Mails per working day by topic",
        "chart_channels": "Link opened by channel",
        "chart_channels_note": "The channel the reply steers to; the overview reply counts under “{overview}”.",
        "chart_repeat": "E-mail again after a steering reply",
        "chart_outcomes": "Answered, suppressed, held",
        "mails": "Mails",
        "received": "received",
        "replied": "answered",
        "repeat_7d": "within 7 days",
        "repeat_30d": "within 30 days",
        "empty_title": "No mail in this period yet",
        "empty_text": "The numbers appear here as soon as the gateway accepts mail. Send a first mail:",
        "empty_demo": "Or create 60 days of sample traffic:",
        "ruleset_marker": "Rule set",
        "markers_note": "Dashed line: a new rule-set version became active on that day.",
        "markers_link": "Versions and changes",
        "no_cutover": "No cut-over set: add settings.cutover to the rule set to compare before and after.",
    },
}


@dataclass(frozen=True)
class View:
    """The period shown and the day that splits it into before and after."""

    period: reports.Period
    cutoff: date

    @property
    def before(self) -> reports.Period:
        return reports.Period(self.period.start, max(self.period.start, self.cutoff - timedelta(days=1)), self.zone)

    @property
    def after(self) -> reports.Period:
        return reports.Period(min(self.cutoff, self.period.end), self.period.end, self.zone)

    @property
    def zone(self) -> ZoneInfo:
        return self.period.zone


def default_view(settings: RuleSettings, today: date) -> View:
    """As many days before `settings.cutover` as from it to today; without one, the last 30 days halved."""
    zone = ZoneInfo(settings.timezone)
    periods = around_cutover(settings.cutover, today, zone)
    if periods is not None:
        before, after = periods
        return View(reports.Period(before.start, after.end, zone), after.start)
    period = reports.Period(today - timedelta(days=DEFAULT_DAYS - 1), today, zone)
    return View(period, period.start + timedelta(days=period.days // 2))


def _share(value: float | None) -> float | None:
    """A share as a percentage for the charts, clamped to its possible range."""
    return None if value is None else round(min(max(value, 0.0), 1.0) * 100, 1)


def _card(
    loc: PageLocale, key: str, comparison: dict[str, Any], kind: str, better: str | None, digits: int = 1
) -> dict[str, Any]:
    before, after = comparison["before"][key], comparison["after"][key]
    change = comparison["change"].get(key)
    text = loc.percent if kind == "share" else lambda v: loc.number(v, digits)
    return {
        "kind": kind,
        "better": better,
        "before": before,
        "after": after,
        "change": change,
        "after_text": text(after),
        "before_text": text(before),
        "change_text": loc.change(change),
    }


def _buckets(view: View) -> list[tuple[date, date]]:
    """Runs of 7 days counted from the cut-off both ways, so that no bucket mixes before and after."""
    spans: list[tuple[date, date]] = []
    start = view.cutoff
    while start > view.period.start:
        first = max(view.period.start, start - timedelta(days=BUCKET_DAYS))
        spans.insert(0, (first, start - timedelta(days=1)))
        start = first
    start = view.cutoff
    while start <= view.period.end:
        last = min(view.period.end, start + timedelta(days=BUCKET_DAYS - 1))
        spans.append((start, last))
        start = last + timedelta(days=1)
    return spans


def activation_markers(engine: Engine, period: reports.Period, days: list[date]) -> list[dict[str, Any]]:
    """Rule-set versions first activated in the period, as (day index, versions) for the time-series charts."""
    since = datetime.combine(period.start, time(0), period.zone)
    until = datetime.combine(period.end + timedelta(days=1), time(0), period.zone)
    per_day: dict[int, list[str]] = defaultdict(list)
    for info in RuleSetStore(engine).activations(since, until):
        day = info.activated_at.astimezone(period.zone).date()
        if day in days:
            per_day[days.index(day)].append(info.version)
    return [{"index": index, "versions": versions} for index, versions in sorted(per_day.items())]


def dashboard_data(
    engine: Engine, view: View, settings: RuleSettings, language: str, unlinked: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Everything the page shows, from the same report functions as the API, names and numbers localised."""
    loc = PageLocale.of(language, settings)
    texts = TEXTS[loc.language]
    period = view.period
    days = [period.start + timedelta(days=i) for i in range(period.days)]
    summary = reports.summary(engine, period, unlinked)
    comparison = reports.compare(engine, view.before, view.after, unlinked)

    def daily(outcome: str) -> dict[date, int]:
        return {key[0]: n for key, n in reports.counts_per_day(engine, period, (), outcome=outcome).items()}

    received, replied = daily(Outcome.RECEIVED), daily(Outcome.REPLIED)
    markers = activation_markers(engine, period, days)
    sent: dict[date, int] = defaultdict(int)  # the click-through's denominator: replies with a link
    for (day, category), n in reports.counts_per_day(engine, period, ("category",), outcome=Outcome.REPLY_SENT).items():
        if category not in unlinked:
            sent[day] += n
    clicked, repeat = daily(Outcome.REPLY_CLICKED), daily(Outcome.REPEAT_7D)
    suppressed, held = daily(SUPPRESSED_PREFIX), daily(Outcome.HELD)
    click_line: list[float | None] = []
    repeat_line: list[float | None] = []
    for first, last in _buckets(view):
        span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        sent_n, clicked_n = sum(sent.get(d, 0) for d in span), sum(clicked.get(d, 0) for d in span)
        replied_n, repeat_n = sum(replied.get(d, 0) for d in span), sum(repeat.get(d, 0) for d in span)
        click_line += [_share(clicked_n / sent_n) if sent_n else None] * len(span)
        repeat_line += [_share(repeat_n / replied_n) if replied_n else None] * len(span)

    before, after = comparison["before"], comparison["after"]
    names = sorted(
        {*before["by_category"], *after["by_category"]},
        key=lambda n: (
            -max(
                before["by_category"].get(n, {}).get("received", 0), after["by_category"].get(n, {}).get("received", 0)
            )
        ),
    )
    rows = []
    for name in names:
        a, b = before["by_category"].get(name, {}), after["by_category"].get(name, {})
        mails_a, mails_b = a.get("received_per_working_day"), b.get("received_per_working_day")
        change = round((mails_b - mails_a) / mails_a, 4) if mails_a and mails_b is not None else None
        rows.append(
            {
                "name": loc.category(name),
                "before": loc.number(mails_a, 1),
                "after": loc.number(mails_b, 1),
                "change": change,
                "change_text": loc.change(change),
                "click_before": a.get("click_through"),
                "click_after": b.get("click_through"),
                "click_before_text": loc.percent(a.get("click_through")),
                "click_after_text": loc.percent(b.get("click_through")),
            }
        )
    channels = [
        c
        for c in sorted({*before["by_channel"], *after["by_channel"]})
        if before["by_channel"].get(c, {}).get("replies_sent") or after["by_channel"].get(c, {}).get("replies_sent")
    ]
    replied_categories = [n for n in summary["by_category"] if summary["by_category"][n]["replied"]]
    side = {
        "before": loc.day(view.before.start) + " – " + loc.day(view.before.end),
        "after": loc.day(view.after.start) + " – " + loc.day(view.after.end),
    }
    return {
        "locale": loc.tag,
        "empty": summary["received"] == 0 and not summary["rejected_at_smtp"],
        "summary": summary,
        "comparison": comparison,
        "sides": side,
        "cards": [
            {
                "label": texts["per_working_day"],
                "note": texts["per_working_day_note"],
                **_card(loc, "received_per_working_day", comparison, "count", "down"),
            },
            {
                "label": texts["replies"],
                "note": texts["replies_note"],
                **_card(loc, "replies_sent", comparison, "count", None, 0),
            },
            {
                "label": texts["repeat"],
                "note": texts["repeat_note"],
                **_card(loc, "repeat_rate_7d", comparison, "share", "down"),
            },
            {
                "label": texts["click"],
                "note": texts["click_note"],
                **_card(loc, "click_through", comparison, "share", "up"),
            },
        ],
        "totals": [
            {
                "label": texts["held"],
                "note": texts["held_note"],
                "value": summary["held"],
                "text": loc.number(summary["held"]),
            },
            {
                "label": texts["suppressed"],
                "note": texts["suppressed_note"],
                "value": summary["suppressed"],
                "text": loc.number(summary["suppressed"]),
            },
        ],
        "categories": rows,
        "charts": {
            "daily": {
                "labels": [loc.short_day(d) for d in days],
                "after_from": days.index(view.after.start) if view.after.start in days else len(days),
                "markers": markers,
                "marker_label": texts["ruleset_marker"],
                "bars": {"label": texts["mails"], "data": [received.get(d, 0) for d in days]},
                "lines": [
                    {"label": texts["click_through"], "data": click_line},
                    {"label": texts["repeat"], "data": repeat_line},
                ],
            },
            "categories": {
                "sides": True,
                "labels": [row["name"] for row in rows],
                "datasets": [
                    {
                        "label": f"{texts['before']} ({side['before']})",
                        "data": [before["by_category"].get(n, {}).get("received_per_working_day") for n in names],
                    },
                    {
                        "label": f"{texts['after']} ({side['after']})",
                        "data": [after["by_category"].get(n, {}).get("received_per_working_day") for n in names],
                    },
                ],
            },
            "channels": {
                "percent": True,
                "sides": True,
                "labels": [loc.channel(c) for c in channels],
                "datasets": [
                    {
                        "label": texts["before"],
                        "data": [_share(before["by_channel"].get(c, {}).get("click_through")) for c in channels],
                    },
                    {
                        "label": texts["after"],
                        "data": [_share(after["by_channel"].get(c, {}).get("click_through")) for c in channels],
                    },
                ],
            },
            "repeat": {
                "percent": True,
                "labels": [loc.category(n) for n in replied_categories],
                "datasets": [
                    {
                        "label": texts["repeat_7d"],
                        "data": [_share(summary["by_category"][n]["repeat_rate_7d"]) for n in replied_categories],
                    },
                    {
                        "label": texts["repeat_30d"],
                        "data": [_share(summary["by_category"][n]["repeat_rate_30d"]) for n in replied_categories],
                    },
                ],
            },
            "outcomes": {
                "labels": [loc.short_day(d) for d in days],
                "markers": markers,
                "marker_label": texts["ruleset_marker"],
                "datasets": [
                    {"label": texts["received"], "data": [received.get(d, 0) for d in days]},
                    {"label": texts["replied"], "data": [replied.get(d, 0) for d in days]},
                    {"label": texts["suppressed"], "data": [suppressed.get(d, 0) for d in days]},
                    {"label": texts["held"], "data": [held.get(d, 0) for d in days]},
                ],
            },
        },
    }


class Dashboard:
    def __init__(self, engine: Engine, rules: RuleSetHolder, templates_dir: Path, auth: Auth) -> None:
        self.engine = engine
        self.rules = rules
        self.auth = auth
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir / "dashboard")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def view(self, request: web.Request, settings: RuleSettings) -> View:
        zone = ZoneInfo(settings.timezone)
        if not request.query.get("from") and not request.query.get("to"):
            view = default_view(settings, datetime.now(zone).date())
            cutoff = _date(request, "cutoff", view.cutoff)
            return View(view.period, cutoff)
        period = period_from(request, zone)
        middle = period.start + timedelta(days=period.days // 2)
        cutoff = _date(request, "cutoff", settings.cutover or middle)
        # both sides need a day: a cut-off on or outside the period's edge compares its halves instead
        return View(period, cutoff if period.start < cutoff <= period.end else middle)

    async def page(self, request: web.Request) -> web.Response:
        settings = self.rules.current.settings
        view = self.view(request, settings)
        language = request.query.get("lang", "de")
        unlinked = unlinked_categories(self.rules.current, self.rules.templates_dir)
        data = await asyncio.to_thread(dashboard_data, self.engine, view, settings, language, unlinked)
        loc = PageLocale.of(language, settings)
        served = settings.served.addresses[:1] or [f"info@{d}" for d in settings.served.domains[:1]]
        html = self.env.get_template("dashboard.html.j2").render(
            organisation=settings.organisation,
            data=data,
            view=view,
            loc=loc,
            t=TEXTS[loc.language],
            cutover=settings.cutover,
            overview=loc.channel(Channel.OVERVIEW),
            first_address=served[0] if served else "info@example.org",
            other_language="en" if loc.language == "de" else "de",
            **self._page_context(request),
        )
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    def _page_context(self, request: web.Request) -> dict[str, Any]:
        """What the layout needs: the style nonce of this response and, when logged in, the logout form's token."""
        session = request.get(SESSION)
        return {
            "csp_nonce": request[CSP_NONCE],
            "csrf_field": CSRF_FIELD,
            "logout_csrf": self.auth.sessions.csrf_token(session) if session is not None else None,
        }

    def _login_page(self, request: web.Request, *, error: str | None, status: int = 200) -> web.Response:
        secret, new = self.auth.login_secret(request)
        html = self.env.get_template("login.html.j2").render(
            error=error, csrf_token=self.auth.sessions.login_csrf_token(secret), **self._page_context(request)
        )
        response = web.Response(
            text=html, content_type="text/html", status=status, headers={"Cache-Control": "no-store"}
        )
        if new:
            self.auth.set_login_cookie(request, response, secret)
        return response

    async def login_form(self, request: web.Request) -> web.Response:
        return self._login_page(request, error="wrong" if request.query.get("error") == "1" else None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        # the middleware has checked the CSRF token; the failure limit comes before the comparison, so a
        # limited client learns nothing about its guesses
        client = self.auth.client(request).limit_key
        wait = self.auth.limiter.retry_after(client)
        if wait is not None:
            response = self._login_page(request, error="limited", status=429)
            response.headers["Retry-After"] = str(wait)
            return response
        form = await request.post()
        if not self.auth.token_matches(str(form.get("token", ""))):
            self.auth.limiter.failed(client)
            raise web.HTTPSeeOther("/dashboard/login?error=1")
        self.auth.limiter.succeeded(client)
        response = web.HTTPSeeOther("/dashboard")
        self.auth.set_session_cookie(request, response)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = request.get(SESSION)
        if session is not None:
            self.auth.sessions.revoke(session)
        response = web.HTTPSeeOther("/dashboard/login")
        self.auth.clear_session_cookie(response)
        raise response

    def register(self, app: web.Application) -> None:
        app.router.add_get("/dashboard", self.page)
        app.router.add_get("/dashboard/login", self.login_form)
        app.router.add_post("/dashboard/login", self.login)
        app.router.add_post("/dashboard/logout", self.logout)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)

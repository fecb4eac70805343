"""GET /dashboard: server-rendered page with the channel-shift charts; data embedded, chart library vendored."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from sqlalchemy import Engine

from services.classify.reload import RuleSetHolder
from services.store import reports
from services.web.api import _date, period_from
from services.web.auth import CSRF_FIELD, SESSION, Auth
from services.web.security import CSP_NONCE

STATIC_DIR = Path(__file__).resolve().parent / "static"


def _days(period: reports.Period) -> list[str]:
    return [(period.start + timedelta(days=i)).isoformat() for i in range(period.days)]


def _series(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    keys = sorted({row["key"] for row in rows})
    table = {(row["period"], row["key"]): row["count"] for row in rows}
    return {
        "labels": labels,
        "datasets": [{"label": key, "data": [table.get((day, key), 0) for day in labels]} for key in keys],
    }


def _percent(value: float | None) -> float | None:
    return None if value is None else round(value * 100, 1)


def dashboard_data(engine: Engine, period: reports.Period, cutoff: date) -> dict[str, Any]:
    labels = _days(period)
    by_category = reports.volumes(engine, period, by="category")
    by_channel = reports.volumes(engine, period, by="channel")
    replied = reports.volumes(engine, period, by="none", outcome="replied")
    suppressed = reports.volumes(engine, period, by="none", outcome="suppressed:")
    summary = reports.summary(engine, period)
    categories = summary["by_category"]
    channels = summary["by_channel"]

    def per_day(rows: list[dict[str, Any]]) -> list[int]:
        table: dict[str, int] = defaultdict(int)
        for row in rows:
            table[row["period"]] += row["count"]
        return [table.get(day, 0) for day in labels]

    before = reports.Period(period.start, max(period.start, cutoff - timedelta(days=1)), period.zone)
    after = reports.Period(min(cutoff, period.end), period.end, period.zone)
    comparison = reports.compare(engine, before, after)
    metrics = [
        ("E-Mails pro Tag", "received_per_day", 1),
        ("Antwortquote %", "reply_rate", 100),
        ("Wiederholer 7 Tage %", "repeat_rate_7d", 100),
        ("Klickrate %", "click_through", 100),
    ]
    return {
        "summary": summary,
        "comparison": comparison,
        "by_category": _series(by_category, labels),
        "by_channel": _series(by_channel, labels),
        "replies": {
            "labels": labels,
            "datasets": [
                {"label": "eingegangen", "data": per_day(by_category)},  # the categories add up to all mail
                {"label": "beantwortet", "data": per_day(replied)},
                {"label": "unterdrückt", "data": per_day(suppressed)},
            ],
        },
        "repeat": {
            "labels": list(categories),
            "datasets": [
                {
                    "label": "nach 7 Tagen erneut per E-Mail",
                    "data": [_percent(c["repeat_rate_7d"]) for c in categories.values()],
                },
                {"label": "nach 30 Tagen", "data": [_percent(c["repeat_rate_30d"]) for c in categories.values()]},
            ],
        },
        "clicks": {
            "labels": list(channels),
            "datasets": [{"label": "Klickrate", "data": [_percent(c["click_through"]) for c in channels.values()]}],
        },
        "compare": {
            "labels": [label for label, _key, _factor in metrics],
            "datasets": [
                {
                    "label": f"{name} {part['period']['from']} – {part['period']['to']}",
                    "data": [
                        None if part[key] is None else round(part[key] * factor, 2) for _l, key, factor in metrics
                    ],
                }
                for name, part in (("vorher", comparison["before"]), ("nachher", comparison["after"]))
            ],
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

    async def page(self, request: web.Request) -> web.Response:
        settings = self.rules.current.settings
        period = period_from(request, ZoneInfo(settings.timezone))
        default_cutoff = period.start + timedelta(days=period.days // 2)
        cutoff = _date(request, "cutoff", default_cutoff)
        data = await asyncio.to_thread(dashboard_data, self.engine, period, cutoff)
        html = self.env.get_template("dashboard.html.j2").render(
            organisation=settings.organisation,
            data=data,
            period=period,
            cutoff=cutoff,
            summary=data["summary"],
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

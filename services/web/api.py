"""/api/v1 reporting: volumes (JSON and CSV), summary and before/after comparison, from the counter rollup."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlalchemy import Engine

from services.domain import Outcome
from services.ruleset.reload import RuleSetHolder
from services.store import reports
from services.web.replylinks import unlinked_categories

DEFAULT_DAYS = 30
MAX_SIDE_DAYS = 366
FILTERS = ("mailbox", "category", "channel")
# the per-group numbers of /api/v1/summary.csv, as in the JSON summary (docs/metrics.md)
SUMMARY_COLUMNS = (
    "received",
    "received_per_day",
    "received_per_working_day",
    "replied",
    "reply_rate",
    "suppressed",
    "held",
    "replies_sent",
    "replies_with_link",
    "replies_clicked",
    "click_through",
    "links_opened",
    "clicks",
    "repeat_7d",
    "repeat_rate_7d",
    "repeat_30d",
    "repeat_rate_30d",
)


def _date(request: web.Request, name: str, default: date) -> date:
    raw = request.query.get(name)
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=f'{{"error": "{name} must be YYYY-MM-DD"}}', content_type="application/json"
        ) from exc


def period_from(request: web.Request, zone: ZoneInfo, prefix: str = "") -> reports.Period:
    today = datetime.now(zone).date()  # the agency's day, not the server's
    end = _date(request, f"{prefix}to", today)
    start = _date(request, f"{prefix}from", end - timedelta(days=DEFAULT_DAYS - 1))
    if start > end:
        raise web.HTTPBadRequest(text='{"error": "from is after to"}', content_type="application/json")
    if (end - start).days > 3 * 366:
        raise web.HTTPBadRequest(text='{"error": "period longer than 3 years"}', content_type="application/json")
    return reports.Period(start, end, zone)


def around_cutover(cutover: date | None, today: date, zone: ZoneInfo) -> tuple[reports.Period, reports.Period] | None:
    """The same number of days before the cut-over as from it to today (at most a year each), or None."""
    if cutover is None or cutover > today:
        return None
    days = min((today - cutover).days + 1, MAX_SIDE_DAYS)
    after = reports.Period(cutover, cutover + timedelta(days=days - 1), zone)
    before = reports.Period(cutover - timedelta(days=days), cutover - timedelta(days=1), zone)
    return before, after


def _choice(request: web.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in allowed:
        raise web.HTTPBadRequest(
            text=f'{{"error": "{name} must be one of {", ".join(allowed)}"}}', content_type="application/json"
        )
    return value


class ReportsApi:
    def __init__(self, engine: Engine, rules: RuleSetHolder) -> None:
        self.engine = engine
        self.rules = rules

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.rules.current.settings.timezone)

    @property
    def unlinked(self) -> frozenset[str]:
        return unlinked_categories(self.rules.current, self.rules.templates_dir)

    def _volume_args(self, request: web.Request) -> dict[str, Any]:
        return {
            "period": period_from(request, self.zone),
            "group_by": _choice(request, "group_by", reports.GROUP_BY, "day"),
            "by": _choice(request, "by", reports.BY, "category"),
            "outcome": request.query.get("outcome", Outcome.RECEIVED)[:80],
            "filters": {name: request.query[name] for name in FILTERS if request.query.get(name)},
        }

    async def volumes(self, request: web.Request) -> web.Response:
        args = self._volume_args(request)
        series = await asyncio.to_thread(reports.volumes, self.engine, **args)
        period: reports.Period = args["period"]
        return web.json_response(
            {
                "from": period.start.isoformat(),
                "to": period.end.isoformat(),
                "group_by": args["group_by"],
                "by": args["by"],
                "outcome": args["outcome"],
                "series": series,
            }
        )

    async def volumes_csv(self, request: web.Request) -> web.Response:
        args = self._volume_args(request)
        series = await asyncio.to_thread(reports.volumes, self.engine, **args)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["period", args["by"], "outcome", "count"])
        for row in series:
            writer.writerow([row["period"], row["key"], args["outcome"], row["count"]])
        return web.Response(
            text=buffer.getvalue(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="channelshift-volumes.csv"'},
        )

    async def summary(self, request: web.Request) -> web.Response:
        period = period_from(request, self.zone)
        return web.json_response(await asyncio.to_thread(reports.summary, self.engine, period, self.unlinked))

    async def summary_csv(self, request: web.Request) -> web.Response:
        period = period_from(request, self.zone)
        summary = await asyncio.to_thread(reports.summary, self.engine, period, self.unlinked)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["from", "to", "by", "key", *SUMMARY_COLUMNS])
        rows = [("all", "all", summary)]
        rows += [(by, key, figures) for by in ("category", "channel") for key, figures in summary[f"by_{by}"].items()]
        for by, key, figures in rows:
            values = ["" if figures[column] is None else figures[column] for column in SUMMARY_COLUMNS]
            writer.writerow([period.start.isoformat(), period.end.isoformat(), by, key, *values])
        return web.Response(
            text=buffer.getvalue(),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": 'attachment; filename="channelshift-summary.csv"'},
        )

    async def compare(self, request: web.Request) -> web.Response:
        names = ("before_from", "before_to", "after_from", "after_to")
        given = [name for name in names if name in request.query]
        if given:
            if len(given) != len(names):
                raise web.HTTPBadRequest(
                    text='{"error": "needs before_from, before_to, after_from, after_to (or none of them)"}',
                    content_type="application/json",
                )
            before = period_from(request, self.zone, "before_")
            after = period_from(request, self.zone, "after_")
        else:
            periods = around_cutover(self.rules.current.settings.cutover, datetime.now(self.zone).date(), self.zone)
            if periods is None:
                raise web.HTTPBadRequest(
                    text='{"error": "needs before_from, before_to, after_from, after_to (no past settings.cutover)"}',
                    content_type="application/json",
                )
            before, after = periods
        return web.json_response(await asyncio.to_thread(reports.compare, self.engine, before, after, self.unlinked))

    def register(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/volumes", self.volumes)
        app.router.add_get("/api/v1/volumes.csv", self.volumes_csv)
        app.router.add_get("/api/v1/summary", self.summary)
        app.router.add_get("/api/v1/summary.csv", self.summary_csv)
        app.router.add_get("/api/v1/compare", self.compare)

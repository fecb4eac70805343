"""GET /workbench: rule hits, staff-feedback precision, try a mail (explain + preview), replay a candidate set."""

from __future__ import annotations

import asyncio
import csv
import email
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web
from sqlalchemy import Engine

from services.classify.engine import RuleSet
from services.config import Settings
from services.domain import DEFAULT_LANGUAGE, PAGE_LANGUAGES
from services.reply.policy import policy_config
from services.reply.render import ReplyRenderer
from services.ruleset.loader import RuleSetInvalid, load_rules
from services.ruleset.reload import RuleSetHolder
from services.store.corrections import newest_corrections, precision_by_category
from services.store.rulehits import rule_hits
from services.tools.explain import explain
from services.tools.preview import Preview, preview
from services.tools.replay import ReplayReport, replay
from services.web.auth import CSRF_FIELD, SESSION, Auth
from services.web.locale import PageLocale
from services.web.security import CSP_NONCE
from services.web.workbench_texts import TEXTS

PRECISION_DAYS = 30
MAX_REPLAY_DAYS = 366
MAX_CANDIDATES = 100
CSV_COLUMNS = (
    "message_id",
    "decided_category",
    "corrected_category",
    "rule_id",
    "ruleset_version",
    "decided_at",
    "corrected_at",
)


class Refused(Exception):
    """A form the page answers with a message instead of a result (the key names the text)."""

    def __init__(self, key: str, status: int = 400, **values: Any) -> None:
        super().__init__(key)
        self.key, self.status, self.values = key, status, values


def rules_view(engine: Engine, ruleset: RuleSet, loc: PageLocale, now: datetime) -> dict[str, Any]:
    """The running set's rules in order with their hits; the rules that never fired; the other deciders."""
    hits = rule_hits(engine, now, ruleset.version)

    def when(moment: datetime | None) -> str:
        return "–" if moment is None else loc.day(moment.astimezone(ZoneInfo(ruleset.settings.timezone)).date())

    rows = []
    for compiled in ruleset.rules:
        rule, found = compiled.rule, hits.get(compiled.rule.id)
        rows.append(
            {
                "id": rule.id,
                "description": rule.description,
                "category": loc.category(rule.then.category),
                "channel": loc.channel(rule.then.channel),
                "last_7d": found.last_7d if found else 0,
                "last_30d": found.last_30d if found else 0,
                "this_version": found.this_version if found else 0,
                "total": found.total if found else 0,
                "last_hit": when(found.last_hit if found else None),
            }
        )
    known = {compiled.rule.id for compiled in ruleset.rules}
    others = [
        {
            "id": rule_id,
            "last_7d": found.last_7d,
            "last_30d": found.last_30d,
            "this_version": found.this_version,
            "last_hit": when(found.last_hit),
        }
        for rule_id, found in sorted(hits.items())
        if rule_id not in known
    ]
    return {"rules": rows, "never_fired": [row for row in rows if not row["total"]], "others": others}


def precision_view(engine: Engine, loc: PageLocale, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for name, figures in precision_by_category(engine, now - timedelta(days=PRECISION_DAYS)).items():
        rows.append(
            {
                "name": loc.category(name),
                "decided": figures.decided,
                "corrected_away": figures.corrected_away,
                "corrected_in": figures.corrected_in,
                "confirmed": figures.confirmed,
                "precision": figures.precision,
                "precision_text": loc.percent(figures.precision),
            }
        )
    return rows


def reply_view(result: Preview) -> dict[str, Any] | None:
    """The reply's header block as sent and every part decoded (HTML as its source)."""
    if result.reply is None:
        return None
    data = result.reply.as_bytes()
    parsed = email.message_from_bytes(data, policy=default_policy)
    parts = [
        {"type": part.get_content_type(), "content": str(part.get_content()).rstrip()}
        for part in parsed.walk()
        if not part.is_multipart()
    ]
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii", errors="replace").replace("\r\n", "\n")
    return {"headers": head, "subject": str(parsed["Subject"]), "parts": parts}


def try_mail(ruleset: RuleSet, settings: Settings, raw: bytes, received_at: datetime) -> dict[str, Any]:
    """explain() for the trace and preview() for the reply: the worker's own decision core, as the CLI calls it."""
    policy = policy_config(settings, warn=False)
    explained = explain(ruleset, raw, received_at=received_at, policy=policy)
    result = preview(
        ruleset,
        ruleset.renderer or ReplyRenderer(settings.templates_dir),
        raw,
        received_at=received_at,
        hostname=settings.hostname,
        policy=policy,
        public_url=settings.public_url if settings.track_clicks else None,
    )
    verdict = result.verdict
    return {
        "explain": explained,
        "verdict": verdict,
        "delivery": result.delivery,
        "reply_language": result.reply_language,
        "reply_error": result.reply_error,
        "reply": reply_view(result),
    }


def candidates(root: Path | None) -> list[str]:
    """Folders under the allowed candidates folder that hold rule files (offered in the form)."""
    if root is None or not root.is_dir():
        return []
    found = [p.name for p in sorted(root.iterdir()) if p.is_dir() and any(p.glob("*.y*ml"))]
    return found[:MAX_CANDIDATES]


def candidate_path(root: Path | None, name: str) -> Path:
    """The folder `name` names, refused unless it lies inside `root` once every link is resolved."""
    if root is None:
        raise Refused("replay_disabled", 403)
    base = root.resolve()
    try:
        path = (base / name.strip()).resolve()
        inside = bool(name.strip()) and path.is_relative_to(base) and path.is_dir()
    except (OSError, ValueError):  # a NUL byte, a loop of links
        inside = False
    if not inside:
        raise Refused("refused_path", 403)
    return path


def run_replay(engine: Engine, settings: Settings, folder: Path, since: datetime) -> ReplayReport:
    ruleset = load_rules(
        folder,
        settings.templates_dir,
        cache_dir=settings.effective_model_cache_dir,
        examples_dir=settings.examples_dir,
    )
    return replay(engine, ruleset, since)


def replay_view(report: ReplayReport, loc: PageLocale) -> dict[str, Any]:
    data = report.as_dict()
    totals = [
        {
            "name": loc.category(name),
            "decided": numbers["decided"],
            "replayed": numbers["replayed"],
            "delta": numbers["replayed"] - numbers["decided"],
        }
        for name, numbers in data["category_totals"].items()
    ]

    def moves(key: str, name: Any) -> list[dict[str, Any]]:
        return [{"from": name(m["from"]), "to": name(m["to"]), "count": m["count"]} for m in data[key]]

    return {
        "version": report.candidate_version,
        "total": report.total,
        "changed": report.changed,
        "skipped": report.purged,
        "totals": totals,
        "category_moves": moves("category_shift", loc.category),
        "channel_moves": moves("channel_shift", loc.channel),
    }


@dataclass(frozen=True)
class Form:
    """What the page shows beside the standing sections: one form's result or refusal."""

    tried: dict[str, Any] | None = None
    replayed: dict[str, Any] | None = None
    problem: str | None = None
    problem_at: str | None = None  # "preview" | "replay"
    errors: tuple[str, ...] = ()


class Workbench:
    def __init__(
        self, engine: Engine, rules: RuleSetHolder, settings: Settings, auth: Auth, templates_dir: Path
    ) -> None:
        self.engine = engine
        self.rules = rules
        self.settings = settings
        self.auth = auth
        self.replaying = asyncio.Lock()  # one replay at a time: it reads every stored mail of the period
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir / "dashboard")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    @staticmethod
    def locale_of(request: web.Request, ruleset: RuleSet) -> PageLocale:
        language = request.query.get("lang", "de")
        return PageLocale.of(language if language in PAGE_LANGUAGES else DEFAULT_LANGUAGE, ruleset.settings)

    async def _render(self, request: web.Request, form: Form, status: int = 200) -> web.Response:
        ruleset = self.rules.current
        loc = self.locale_of(request, ruleset)
        now = datetime.now(UTC)
        standing = await asyncio.to_thread(
            lambda: (rules_view(self.engine, ruleset, loc, now), precision_view(self.engine, loc, now))
        )
        session = request.get(SESSION)
        csrf = self.auth.sessions.csrf_token(session) if session is not None else ""
        t = TEXTS[loc.language]
        problem = None
        if form.problem is not None:
            limit = loc.number(self.settings.workbench_max_upload_bytes / 1024 / 1024, 1) + " MiB"
            problem = t[form.problem].format(limit=limit)
        html = self.env.get_template("workbench.html.j2").render(
            t=t,
            loc=loc,
            organisation=ruleset.settings.organisation,
            version=ruleset.version,
            standing=standing[0],
            precision=standing[1],
            form=form,
            problem=problem,
            candidates=candidates(self.settings.workbench_candidates_dir),
            replay_enabled=self.settings.workbench_candidates_dir is not None,
            max_upload=self.settings.workbench_max_upload_bytes,
            other_language="en" if loc.language == "de" else "de",
            csp_nonce=request[CSP_NONCE],
            csrf_field=CSRF_FIELD,
            csrf_token=csrf,
            logout_csrf=csrf or None,
        )
        return web.Response(text=html, content_type="text/html", status=status, headers={"Cache-Control": "no-store"})

    async def page(self, request: web.Request) -> web.Response:
        return await self._render(request, Form())

    async def _mail_of(self, request: web.Request) -> tuple[bytes, datetime]:
        form = await request.post()
        limit = self.settings.workbench_max_upload_bytes
        upload = form.get("file")
        raw = b""
        if isinstance(upload, web.FileField):
            raw = upload.file.read(limit + 1)
        if not raw:
            raw = str(form.get("eml", "")).replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        if len(raw) > limit:
            raise Refused("too_large", 413)
        if not raw.strip():
            raise Refused("empty_mail")
        zone = ZoneInfo(self.rules.current.settings.timezone)
        at = str(form.get("at", "")).strip()
        if not at:
            return raw, datetime.now(UTC)
        try:
            moment = datetime.fromisoformat(at)
        except ValueError as exc:
            raise Refused("bad_time") from exc
        return raw, moment if moment.tzinfo else moment.replace(tzinfo=zone)

    async def try_post(self, request: web.Request) -> web.Response:
        try:
            raw, received_at = await self._mail_of(request)
        except Refused as refused:
            return await self._render(request, Form(problem=refused.key, problem_at="preview"), refused.status)
        ruleset = self.rules.current
        tried = await asyncio.to_thread(try_mail, ruleset, self.settings, raw, received_at)
        return await self._render(request, Form(tried=tried))

    async def replay_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            folder = candidate_path(self.settings.workbench_candidates_dir, str(form.get("candidate", "")))
        except Refused as refused:
            return await self._render(request, Form(problem=refused.key, problem_at="replay"), refused.status)
        try:
            days = min(max(int(str(form.get("days", ""))), 1), MAX_REPLAY_DAYS)
        except ValueError:
            days = 30
        if self.replaying.locked():
            return await self._render(request, Form(problem="busy", problem_at="replay"), 429)
        since = datetime.now(UTC) - timedelta(days=days)
        async with self.replaying:
            try:
                report = await asyncio.to_thread(run_replay, self.engine, self.settings, folder, since)
            except Exception as exc:
                # whatever a broken candidate raises is a refused set, as for the running set's hot reload
                errors = (
                    tuple(str(error) for error in exc.errors[:50])
                    if isinstance(exc, RuleSetInvalid)
                    else (f"{folder.name}: {type(exc).__name__}: {exc}",)
                )
                return await self._render(
                    request, Form(problem="invalid_rules", problem_at="replay", errors=errors), 422
                )
        loc = self.locale_of(request, self.rules.current)
        return await self._render(request, Form(replayed={"days": days, **replay_view(report, loc)}))

    async def corrections_csv(self, _request: web.Request) -> web.Response:
        rows = await asyncio.to_thread(newest_corrections, self.engine)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(
                [*(getattr(row, c) for c in CSV_COLUMNS[:5]), row.decided_at.isoformat(), row.corrected_at.isoformat()]
            )
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="corrections.csv"', "Cache-Control": "no-store"},
        )

    def register(self, app: web.Application) -> None:
        app.router.add_get("/workbench", self.page)
        app.router.add_post("/workbench/try", self.try_post)
        app.router.add_post("/workbench/replay", self.replay_post)
        app.router.add_get("/workbench/corrections.csv", self.corrections_csv)

"""GET/POST /f/<token>: staff say which category a misrouted original should have had; signed link, no login."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy import Engine

from services.classify.examples import RULE_ONLY_CATEGORIES
from services.config import Settings
from services.domain import DEFAULT_LANGUAGE, PAGE_LANGUAGES
from services.reply.feedback import PATH, FeedbackToken, read_token
from services.ruleset.reload import RuleSetHolder
from services.store.corrections import newest_answer, record_correction
from services.web.auth import CSRF_FIELD, FEEDBACK_COOKIE, Auth, FailureLimiter
from services.web.locale import PageLocale
from services.web.security import CSP_NONCE

TEXTS: dict[str, dict[str, str]] = {
    "de": {
        "title": "Falsch zugeordnete E-Mail melden",
        "decided": "Zugeordnet als",
        "question": "Welches Anliegen hat diese E-Mail wirklich?",
        "send": "Melden",
        "saved": "Danke – gespeichert als",
        "earlier": "Bisher gemeldet:",
        "same": "Wer das zugeordnete Anliegen wählt, bestätigt die Zuordnung.",
        "note": "Gespeichert wird nur die Kennung der E-Mail und das gewählte Anliegen, kein Inhalt.",
        "invalid": "Dieser Link ist ungültig. Bitte den Link aus der zugestellten E-Mail vollständig öffnen.",
        "expired": "Dieser Link ist abgelaufen.",
        "unknown": "Zu dieser E-Mail gibt es keine Entscheidung (mehr).",
        "limited": "Zu viele Meldungen von diesem Rechner. Bitte später erneut versuchen.",
        "bad_category": "Bitte ein Anliegen aus der Liste wählen.",
        "other_language": "English",
    },
    "en": {
        "title": "Report a misrouted e-mail",
        "decided": "Routed as",
        "question": "Which category does this e-mail really belong to?",
        "send": "Report",
        "saved": "Thank you – saved as",
        "earlier": "Reported so far:",
        "same": "Choosing the category it was routed as confirms the routing.",
        "note": "Only the e-mail's id and the chosen category are stored, no content.",
        "invalid": "This link is not valid. Please open the whole link from the delivered e-mail.",
        "expired": "This link has expired.",
        "unknown": "There is no decision (any more) for this e-mail.",
        "limited": "Too many reports from this computer. Please try again later.",
        "bad_category": "Please choose a category from the list.",
        "other_language": "Deutsch",
    },
}


class FeedbackPage:
    def __init__(
        self, engine: Engine, rules: RuleSetHolder, settings: Settings, auth: Auth, templates_dir: Path
    ) -> None:
        self.engine = engine
        self.rules = rules
        self.key = settings.effective_pseudonym_key
        self.auth = auth
        # every submission and every link that does not verify counts: bounds both spam and token guessing
        self.limiter = FailureLimiter(settings.feedback_max_per_hour, 3600)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir / "dashboard")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def categories(self) -> list[str]:
        return sorted({*self.rules.current.settings.categories, *RULE_ONLY_CATEGORIES})

    def _render(self, request: web.Request, status: int, *, problem: str | None = None, **context: Any) -> web.Response:
        language = request.query.get("lang", "de")
        language = language if language in PAGE_LANGUAGES else DEFAULT_LANGUAGE
        loc = PageLocale.of(language, self.rules.current.settings)
        secret, new = self.auth.login_secret(request, FEEDBACK_COOKIE)
        html = self.env.get_template("feedback.html.j2").render(
            t=TEXTS[language],
            loc=loc,
            problem=problem,
            csp_nonce=request[CSP_NONCE],
            csrf_field=CSRF_FIELD,
            csrf_token=self.auth.sessions.feedback_csrf_token(secret),
            other_language="en" if language == "de" else "de",
            path=request.path,
            **context,
        )
        response = web.Response(
            text=html, content_type="text/html", status=status, headers={"Cache-Control": "no-store"}
        )
        if new:
            self.auth.set_login_cookie(request, response, secret, FEEDBACK_COOKIE, PATH)
        return response

    def _token(self, request: web.Request) -> FeedbackToken | web.Response:
        client = self.auth.client(request).limit_key
        wait = self.limiter.retry_after(client)
        if wait is not None:
            response = self._render(request, 429, problem="limited")
            response.headers["Retry-After"] = str(wait)
            return response
        token = read_token(self.key, request.match_info["token"])
        if token is None:
            self.limiter.failed(client)
            return self._render(request, 404, problem="invalid")
        if token.expired():
            return self._render(request, 410, problem="expired")
        return token

    async def form(self, request: web.Request) -> web.Response:
        token = self._token(request)
        if isinstance(token, web.Response):
            return token
        earlier = await asyncio.to_thread(newest_answer, self.engine, token.message_id)
        saved = request.query.get("saved") == "1" and earlier is not None
        return self._render(request, 200, token=token, categories=self.categories(), earlier=earlier, saved=saved)

    async def submit(self, request: web.Request) -> web.StreamResponse:
        token = self._token(request)
        if isinstance(token, web.Response):
            return token
        self.limiter.failed(self.auth.client(request).limit_key)
        chosen = str((await request.post()).get("category", ""))
        if chosen not in self.categories():
            return self._render(
                request,
                400,
                problem="bad_category",
                token=token,
                categories=self.categories(),
                earlier=None,
                saved=False,
            )
        recorded = await asyncio.to_thread(record_correction, self.engine, token.message_id, token.category, chosen)
        if not recorded:
            return self._render(request, 404, problem="unknown")
        language = request.query.get("lang", "de")
        raise web.HTTPSeeOther(
            f"{request.path}?saved=1&lang={language if language in PAGE_LANGUAGES else DEFAULT_LANGUAGE}"
        )

    def register(self, app: web.Application) -> None:
        app.router.add_get(PATH + "{token}", self.form)
        app.router.add_post(PATH + "{token}", self.submit)

"""Rule-set history on the web: GET /api/v1/rulesets[/{version}] and the /workbench/history page with diffs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from services.filediff import summarise
from services.store.rulesets import RuleSetStore, VersionInfo, diff_against_previous
from services.web.auth import CSRF_FIELD, SESSION, Auth
from services.web.security import CSP_NONCE

_VERSION = re.compile(r"[0-9a-f]{1,64}")
MAX_LISTED = 200


def _version_of(request: web.Request) -> str:
    version = request.match_info["version"]
    if not _VERSION.fullmatch(version):
        raise web.HTTPBadRequest(text='{"error": "malformed version"}', content_type="application/json")
    return version


def version_detail(store: RuleSetStore, version: str) -> dict[str, Any] | None:
    """One version: what was recorded, its files (no contents) and the text diff against its predecessor."""
    info = store.version(version)
    if info is None:
        return None
    return {**info.as_dict(), "files": store.file_list(version), "diff": diff_against_previous(store, info)}


class RuleSetsApi:
    def __init__(self, store: RuleSetStore) -> None:
        self.store = store

    async def list(self, request: web.Request) -> web.Response:
        versions = await asyncio.to_thread(self.store.versions, MAX_LISTED)
        return web.json_response({"versions": [v.as_dict() for v in versions]})

    async def detail(self, request: web.Request) -> web.Response:
        view = await asyncio.to_thread(version_detail, self.store, _version_of(request))
        if view is None:
            return web.json_response({"error": "no such rule-set version"}, status=404)
        return web.json_response(view)

    def register(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/rulesets", self.list)
        app.router.add_get("/api/v1/rulesets/{version}", self.detail)


def _row(info: VersionInfo) -> dict[str, Any]:
    return {
        "version": info.version,
        "activated_at": info.activated_at.strftime("%Y-%m-%d %H:%M UTC"),
        "activated_by": info.activated_by,
        "previous": info.previous_version,
        "changed": summarise(info.changed),
        "warnings": info.warnings,
    }


class HistoryPage:
    """Versions newest first; `?version=V` adds that version's changes and diff. Same login as the dashboard."""

    def __init__(self, store: RuleSetStore, templates_dir: Path, auth: Auth) -> None:
        self.store = store
        self.auth = auth
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir / "dashboard")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    def _data(self, selected: str | None) -> dict[str, Any]:
        versions = self.store.versions(MAX_LISTED)
        chosen = selected or (versions[0].version if versions else None)
        detail = version_detail(self.store, chosen) if chosen else None
        if detail is not None:
            # example mails are listed as a count only: there can be thousands, and they are mails
            examples = [c for c in detail["changed"] if c["path"].startswith("examples/")]
            detail["named_changes"] = [c for c in detail["changed"] if c not in examples]
            detail["example_changes"] = len(examples)
        return {"versions": [_row(v) for v in versions], "selected": detail}

    async def page(self, request: web.Request) -> web.Response:
        selected = request.query.get("version")
        if selected is not None and not _VERSION.fullmatch(selected):
            raise web.HTTPBadRequest(text="malformed version")
        data = await asyncio.to_thread(self._data, selected)
        if selected is not None and data["selected"] is None:
            raise web.HTTPNotFound(text="no such rule-set version")
        session = request.get(SESSION)
        html = self.env.get_template("history.html.j2").render(
            data=data,
            csp_nonce=request[CSP_NONCE],
            csrf_field=CSRF_FIELD,
            logout_csrf=self.auth.sessions.csrf_token(session) if session is not None else None,
        )
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    def register(self, app: web.Application) -> None:
        app.router.add_get("/workbench/history", self.page)

"""create_app(settings): health, readiness, the JSON API, /metrics, /dashboard, /workbench (and its rule-set
history), /r/ and /f/ links."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from arq.connections import ArqRedis
from sqlalchemy import Engine

from services.config import Settings
from services.ruleset.reload import RuleSetHolder, RulesNotLoaded
from services.store.db import ping
from services.store.inspect import failed_deliveries, message_view
from services.store.rulesets import RuleSetStore
from services.web.api import ReportsApi
from services.web.auth import Auth
from services.web.clicks import ClickRecorder, make_redirect_handler
from services.web.dashboard import Dashboard
from services.web.feedback import FeedbackPage
from services.web.history import HistoryPage, RuleSetsApi
from services.web.metrics import MetricsEndpoint
from services.web.openapi import OPENAPI
from services.web.security import security_headers_middleware
from services.web.workbench import Workbench

ENGINE = web.AppKey("engine", Engine)
REDIS = web.AppKey("redis", ArqRedis)
RULES = web.AppKey("rules", RuleSetHolder)
CLICKS = web.AppKey("clicks", ClickRecorder)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, Any] = {}
    try:
        await asyncio.to_thread(ping, request.app[ENGINE])
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), timeout=2)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    # reloading is the watcher's job (every role runs it); a probe only reports, so "SIGHUP only" holds
    checks["rules"] = rules_check(request.app[RULES])
    try:
        checks["deliveries"] = await asyncio.to_thread(failed_deliveries, request.app[ENGINE])
    except Exception as exc:
        checks["deliveries"] = f"error: {type(exc).__name__}"
    # failed deliveries need a person, not a restart: they are shown here but leave the process ready
    ready = checks["database"] == "ok" and checks["redis"] == "ok"
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


def rules_check(holder: RuleSetHolder) -> dict[str, Any]:
    """The running set and where it came from; `errors` are the files' file:line problems (no mail content).

    A process running on the last good set, or on none, stays ready: taken out of a load balancer, a gateway
    would refuse connections, while running it answers 451 and the sending MTA keeps the mail queued.
    """
    errors = [str(e) for e in holder.errors[:20]]
    if not holder.loaded:
        return {
            "version": None,
            "source": None,
            "rules": 0,
            "reload_errors": errors,
            "warnings": [],
            "problem": "no rule set loaded: the rule files do not validate and no good set is recorded",
        }
    current = holder.current
    check: dict[str, Any] = {
        "version": current.version,
        "source": holder.source,
        "rules": len(current.rules),
        "reload_errors": errors,
        "warnings": list(current.warnings[:20]),
    }
    if holder.source == "last-good":
        check["problem"] = "the rule files do not validate: running on the last good set from the database"
    return check


@web.middleware
async def rules_required(request: web.Request, handler: Any) -> web.StreamResponse:
    """Pages and API answers that need the rule set say so while none is loaded, instead of a 500."""
    try:
        response: web.StreamResponse = await handler(request)
    except RulesNotLoaded:
        return web.json_response(
            {"error": "no rule set loaded; see /readyz and `channelshift rules check`"},
            status=503,
            headers={"Retry-After": "10"},
        )
    return response


async def message_detail(request: web.Request) -> web.Response:
    message_id = request.match_info["message_id"]
    if not message_id.isalnum() or len(message_id) > 32:
        return web.json_response({"error": "malformed message id"}, status=400)
    view = await asyncio.to_thread(message_view, request.app[ENGINE], message_id)
    if view is None:
        return web.json_response({"error": "no such message"}, status=404)
    return web.json_response(view)


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def create_health_app(engine: Engine, redis: ArqRedis, rules: RuleSetHolder) -> web.Application:
    """Side listener of gateway and worker processes: probes and this process's metrics, nothing else."""
    app = web.Application(middlewares=[security_headers_middleware(()), rules_required])
    app[ENGINE] = engine
    app[REDIS] = redis
    app[RULES] = rules
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", MetricsEndpoint(engine, rules, redis).handle)
    return app


def create_app(settings: Settings, engine: Engine, redis: ArqRedis, rules: RuleSetHolder) -> web.Application:
    auth = Auth(settings)
    # the headers middleware is outermost, so the access checks' refusals carry the headers as well
    # room for the workbench's largest .eml (pasted or uploaded) plus the form around it
    max_body = max(1024**2, settings.workbench_max_upload_bytes + 256 * 1024)
    app = web.Application(
        middlewares=[security_headers_middleware(auth.trusted), auth.middleware(), rules_required],
        client_max_size=max_body,
    )
    app[ENGINE] = engine
    app[REDIS] = redis
    app[RULES] = rules
    app[CLICKS] = ClickRecorder(engine, settings.click_queue_size)
    app.cleanup_ctx.append(app[CLICKS].cleanup_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/api/v1/messages/{message_id}", message_detail)
    ReportsApi(engine, rules).register(app)
    RuleSetsApi(RuleSetStore(engine)).register(app)
    Dashboard(engine, rules, settings.templates_dir, auth).register(app)
    Workbench(engine, rules, settings, auth, settings.templates_dir).register(app)
    FeedbackPage(engine, rules, settings, auth, settings.templates_dir).register(app)
    HistoryPage(RuleSetStore(engine), settings.templates_dir, auth).register(app)
    app.router.add_get("/metrics", MetricsEndpoint(engine, rules, redis).handle)
    app.router.add_get("/r/{token}", make_redirect_handler(app[CLICKS], rules, settings.effective_pseudonym_key))
    return app

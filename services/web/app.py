"""create_app(settings): health, readiness, the JSON API, /metrics, /dashboard, rule-set history and /r/ redirects."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from arq.connections import ArqRedis
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from services.classify.reload import RuleSetHolder, RulesNotLoaded
from services.config import Settings
from services.store.db import ping
from services.store.models import Decision, Delivery, JobState, Message, Reply
from services.store.rulesets import RuleSetStore
from services.web.api import ReportsApi
from services.web.auth import Auth
from services.web.clicks import ClickRecorder, make_redirect_handler
from services.web.dashboard import Dashboard
from services.web.history import HistoryPage, RuleSetsApi
from services.web.metrics import MetricsEndpoint
from services.web.openapi import OPENAPI
from services.web.security import security_headers_middleware

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
        checks["deliveries"] = await asyncio.to_thread(_failed_deliveries, request.app[ENGINE])
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


def _failed_deliveries(engine: Engine) -> dict[str, Any]:
    """Originals the staff relay refused, wrapper included: how many, and the newest ids to look them up by."""
    failed = col(Delivery.state) == JobState.FAILED
    with Session(engine) as session:
        count = session.exec(select(func.count()).select_from(Delivery).where(failed)).one()
        newest = session.exec(
            select(Delivery.message_id).where(failed).order_by(col(Delivery.created_at).desc()).limit(20)
        ).all()
    return {"failed": int(count), "failed_ids": list(newest)}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _message_view(engine: Engine, message_id: str) -> dict[str, Any] | None:
    with Session(engine) as session:
        message = session.get(Message, message_id)
        if message is None:
            return None
        decision = session.get(Decision, message_id)
        reply = session.get(Reply, message_id)
        delivery = session.get(Delivery, message_id)
        view: dict[str, Any] = {
            "id": message.id,
            "state": message.state,
            "protocol": message.protocol,
            "received_at": _iso(message.received_at),
            "size": message.size,
            "recipients": len(message.rcpt_tos),
            "purged": message.raw is None,
            "decision": None,
            "reply": None,
            "delivery": None,
        }
        if decision is not None:
            view["decision"] = {
                "category": decision.category,
                "channel": decision.channel,
                "rule": decision.rule_id,
                "ruleset_version": decision.ruleset_version,
                "template": decision.template,
                "priority": decision.priority,
                "language": decision.language,
                "reply": decision.reply,
                "suppressed": decision.suppressed,
                "deliver_to": decision.deliver_to,
                "tags": decision.tags,
                "defects": decision.defects,
                "decided_at": _iso(decision.decided_at),
            }
        if reply is not None:
            view["reply"] = {
                "state": reply.state,
                "attempts": reply.attempts,
                "sent_at": _iso(reply.sent_at),
                "error": reply.error,
            }
        if delivery is not None:
            view["delivery"] = {
                "state": delivery.state,
                "attempts": delivery.attempts,
                "delivered_at": _iso(delivery.delivered_at),
                "error": delivery.error,
            }
        return view


async def message_detail(request: web.Request) -> web.Response:
    message_id = request.match_info["message_id"]
    if not message_id.isalnum() or len(message_id) > 32:
        return web.json_response({"error": "malformed message id"}, status=400)
    view = await asyncio.to_thread(_message_view, request.app[ENGINE], message_id)
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
    app = web.Application(middlewares=[security_headers_middleware(auth.trusted), auth.middleware(), rules_required])
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
    HistoryPage(RuleSetStore(engine), settings.templates_dir, auth).register(app)
    app.router.add_get("/metrics", MetricsEndpoint(engine, rules, redis).handle)
    app.router.add_get("/r/{token}", make_redirect_handler(app[CLICKS], rules, settings.effective_pseudonym_key))
    return app

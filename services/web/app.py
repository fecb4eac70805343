"""create_app(settings): health, readiness, the JSON API, /metrics, /dashboard and the /r/ click redirect."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from arq.connections import ArqRedis
from sqlalchemy import Engine
from sqlmodel import Session

from services.classify.reload import RuleSetHolder
from services.config import Settings
from services.store.db import ping
from services.store.models import Decision, Delivery, Message, Reply
from services.web.api import ReportsApi
from services.web.auth import token_middleware
from services.web.clicks import make_redirect_handler
from services.web.dashboard import Dashboard
from services.web.metrics import MetricsEndpoint
from services.web.openapi import OPENAPI

ENGINE = web.AppKey("engine", Engine)
REDIS = web.AppKey("redis", ArqRedis)
RULES = web.AppKey("rules", RuleSetHolder)


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
    holder = request.app[RULES]
    checks["rules"] = {
        "version": holder.current.version,
        "rules": len(holder.current.rules),
        "reload_errors": [str(e) for e in holder.errors[:20]],
        "warnings": list(holder.current.warnings[:20]),
    }
    ready = checks["database"] == "ok" and checks["redis"] == "ok"
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


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
    app = web.Application()
    app[ENGINE] = engine
    app[REDIS] = redis
    app[RULES] = rules
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", MetricsEndpoint(engine, rules, redis).handle)
    return app


def create_app(settings: Settings, engine: Engine, redis: ArqRedis, rules: RuleSetHolder) -> web.Application:
    app = web.Application(middlewares=[token_middleware(settings.admin_token)])
    app[ENGINE] = engine
    app[REDIS] = redis
    app[RULES] = rules
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/api/v1/messages/{message_id}", message_detail)
    ReportsApi(engine, rules).register(app)
    Dashboard(engine, rules, settings.templates_dir, settings.admin_token).register(app)
    app.router.add_get("/metrics", MetricsEndpoint(engine, rules, redis).handle)
    app.router.add_get("/r/{token}", make_redirect_handler(engine, rules, settings.effective_pseudonym_key))
    return app

"""Admin-token middleware: bearer header or dashboard cookie, constant-time compare; open paths stay open."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

OPEN_PREFIXES = ("/healthz", "/readyz", "/metrics", "/r/", "/static/", "/dashboard/login")
SESSION_COOKIE = "channelshift_session"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_middleware(token: str | None) -> Middleware:
    expected_header = f"Bearer {token}".encode()
    expected_cookie = (token or "").encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and not request.path.startswith(OPEN_PREFIXES):
            header_ok = hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected_header)
            cookie_ok = hmac.compare_digest(request.cookies.get(SESSION_COOKIE, "").encode(), expected_cookie)
            if not (header_ok or cookie_ok):
                if request.path.startswith("/dashboard"):
                    raise web.HTTPSeeOther("/dashboard/login")
                return web.json_response(
                    {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    return check

"""Bearer-token middleware: constant-time compare; health, metrics and redirects stay open."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

OPEN_PREFIXES = ("/healthz", "/readyz", "/metrics", "/r/")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_middleware(token: str | None) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and not request.path.startswith(OPEN_PREFIXES):
            supplied = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(supplied.encode(), expected.encode()):
                return web.json_response(
                    {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    return check

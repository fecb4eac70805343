"""Admin access: bearer token or a signed, expiring dashboard session; CSRF tokens; a login failure limit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from services.config import Settings
from services.web.security import Client, client_of

OPEN_PREFIXES = ("/healthz", "/readyz", "/metrics", "/r/", "/static/", "/dashboard/login")
SESSION_COOKIE = "channelshift_session"
LOGIN_COOKIE = "channelshift_login"  # the pre-login CSRF secret (double submit)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]

_COOKIE = re.compile(r"v1\.([A-Za-z0-9_-]{22})\.(\d{1,12})\.(\d{1,12})\.([A-Za-z0-9_-]{43})")
_LOGIN_SECRET = re.compile(r"[A-Za-z0-9_-]{22}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class SessionInfo:
    sid: str
    issued_at: int
    expires_at: int


SESSION = web.RequestKey("session", SessionInfo)  # the session a cookie proved


class Sessions:
    """Dashboard sessions as `v1.<sid>.<issued>.<expires>.<mac>`, HMAC-SHA256 signed; no server-side store.

    The key is derived from the admin token, so rotating the token ends every session. Logout revokes a
    session id in this process (a stolen copy of the cookie then stops working here too); other web
    processes honour it until it expires, which `lifetime` bounds.
    """

    def __init__(self, secret: bytes, lifetime: float, clock: Clock = time.time) -> None:
        self._key = hmac.new(secret, b"channelshift-dashboard-session-v1", hashlib.sha256).digest()
        self.lifetime = lifetime
        self._clock = clock
        self._revoked: dict[str, int] = {}

    def _mac(self, message: str) -> str:
        return _b64(hmac.new(self._key, message.encode(), hashlib.sha256).digest())

    def issue(self) -> tuple[str, SessionInfo]:
        now = int(self._clock())
        info = SessionInfo(secrets.token_urlsafe(16), now, now + max(1, int(self.lifetime)))
        body = f"v1.{info.sid}.{info.issued_at}.{info.expires_at}"
        return f"{body}.{self._mac(body)}", info

    def read(self, cookie: str) -> SessionInfo | None:
        match = _COOKIE.fullmatch(cookie)
        if match is None:
            return None
        sid, issued, expires, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(f"v1.{sid}.{issued}.{expires}")):
            return None
        now = self._clock()
        info = SessionInfo(sid, int(issued), int(expires))
        # a lifetime shortened in the settings applies to sessions issued before the change as well
        if not info.issued_at - 60 <= now < min(info.expires_at, info.issued_at + self.lifetime):
            return None
        return None if sid in self._revoked else info

    def revoke(self, info: SessionInfo) -> None:
        now = self._clock()
        for sid, expires in list(self._revoked.items()):
            if expires <= now:
                del self._revoked[sid]
        self._revoked[info.sid] = info.expires_at

    def csrf_token(self, info: SessionInfo) -> str:
        return self._mac(f"csrf.{info.sid}")

    def login_csrf_token(self, login_secret: str) -> str:
        return self._mac(f"login-csrf.{login_secret}")


class FailureLimiter:
    """At most `max_failures` failed logins per client within `window` seconds; then refuse until one ages out.

    Memory is bounded by `max_clients`: beyond it the client seen least recently is forgotten.
    """

    def __init__(self, max_failures: int, window: float, clock: Clock = time.monotonic, max_clients: int = 10_000):
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, key: str) -> int | None:
        """Seconds until this client may try again, or None when it may now."""
        failures = self._recent(key)
        if failures is None or len(failures) < self.max_failures:
            return None
        return max(1, math.ceil(failures[-self.max_failures] + self.window - self._clock()))

    def failed(self, key: str) -> None:
        failures = self._recent(key) or deque(maxlen=self.max_failures)
        failures.append(self._clock())
        self._failures[key] = failures
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


class Auth:
    """The web app's access control, shared by the middleware and the login/logout handlers."""

    def __init__(self, settings: Settings, clock: Clock = time.time) -> None:
        self.token = settings.admin_token or None
        # without an admin token nothing is protected; CSRF tokens still need a key that outsiders lack
        secret = self.token.encode() if self.token else settings.effective_pseudonym_key
        self.sessions = Sessions(secret, settings.session_hours * 3600, clock)
        self.limiter = FailureLimiter(settings.login_max_failures, settings.login_window_seconds)
        self.trusted = settings.trusted_proxy_networks
        self.public_https = settings.public_url.lower().startswith("https://")

    def client(self, request: web.Request) -> Client:
        return client_of(request, self.trusted)

    def secure_cookies(self, request: web.Request) -> bool:
        return self.public_https or self.client(request).https

    def token_matches(self, supplied: str) -> bool:
        if not self.token:
            return False
        # digests of equal length: the comparison reveals nothing, not even the token's length
        return hmac.compare_digest(
            hashlib.sha256(supplied.encode()).digest(), hashlib.sha256(self.token.encode()).digest()
        )

    def too_many_failures(self, request: web.Request) -> web.Response | None:
        wait = self.limiter.retry_after(self.client(request).limit_key)
        if wait is None:
            return None
        return web.json_response(
            {"error": "too many failed attempts; try again later"}, status=429, headers={"Retry-After": str(wait)}
        )

    def session_of(self, request: web.Request) -> SessionInfo | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.sessions.read(cookie) if cookie else None

    def set_session_cookie(self, request: web.Request, response: web.StreamResponse) -> SessionInfo:
        value, info = self.sessions.issue()
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=int(self.sessions.lifetime),
            httponly=True,
            samesite="Strict",
            path="/",
            secure=self.secure_cookies(request),
        )
        return info

    def clear_session_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/")

    def login_secret(self, request: web.Request) -> tuple[str, bool]:
        """This browser's pre-login CSRF secret, and whether it is new (then the caller sets the cookie)."""
        current = request.cookies.get(LOGIN_COOKIE, "")
        if _LOGIN_SECRET.fullmatch(current):
            return current, False
        return secrets.token_urlsafe(16), True

    def set_login_cookie(self, request: web.Request, response: web.StreamResponse, secret: str) -> None:
        response.set_cookie(
            LOGIN_COOKIE,
            secret,
            max_age=3600,
            httponly=True,
            samesite="Strict",
            path="/dashboard/login",
            secure=self.secure_cookies(request),
        )

    async def _csrf_ok(self, request: web.Request, info: SessionInfo | None) -> bool:
        supplied = request.headers.get(CSRF_HEADER, "")
        if not supplied and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            supplied = str((await request.post()).get(CSRF_FIELD, ""))
        if not supplied:
            return False
        if request.path == "/dashboard/login":
            login_secret = request.cookies.get(LOGIN_COOKIE, "")
            if not _LOGIN_SECRET.fullmatch(login_secret):
                return False
            expected = self.sessions.login_csrf_token(login_secret)
        elif info is not None:
            expected = self.sessions.csrf_token(info)
        else:
            return False
        return hmac.compare_digest(supplied.encode(), expected.encode())

    def middleware(self) -> Middleware:
        @web.middleware
        async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
            authorization = request.headers.get("Authorization")
            info = self.session_of(request)
            if info is not None:
                request[SESSION] = info
            bearer_ok = False
            if authorization is not None and self.token:
                # a bearer token is a guess like a login: refused before it is compared once the client has
                # failed too often, so the answer never tells a guesser whether the last guess was right
                refused = self.too_many_failures(request)
                if refused is not None:
                    return refused
                bearer_ok = authorization.startswith("Bearer ") and self.token_matches(authorization[7:])
                if not bearer_ok:
                    self.limiter.failed(self.client(request).limit_key)
            open_path = request.path.startswith(OPEN_PREFIXES)
            if self.token and not open_path and not bearer_ok and info is None:
                if request.path.startswith(("/dashboard", "/workbench")):  # pages: to the login form
                    redirect = web.HTTPSeeOther("/dashboard/login")
                    if SESSION_COOKIE in request.cookies:
                        self.clear_session_cookie(redirect)  # expired or from an old token: let it go
                    raise redirect
                return web.json_response(
                    {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
            # a browser attaches cookies to forged cross-site posts; it never attaches an Authorization header
            if request.method in UNSAFE_METHODS and not bearer_ok and not await self._csrf_ok(request, info):
                return web.json_response({"error": "missing or wrong CSRF token"}, status=403)
            return await handler(request)

        return check

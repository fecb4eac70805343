"""Web hardening: signed expiring sessions, logout, CSRF, login limit, proxies, security headers, open-bind guard."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from http.cookies import Morsel, SimpleCookie
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.web.app import create_app, create_health_app
from services.web.auth import CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE, FailureLimiter, Sessions
from services.web.guard import is_loopback
from tests.chromium import chromium_or_skip, chromium_page
from tests.support import ADMIN_TOKEN, AUTH, Pipeline, clean_env, free_port, log_in, login_form, make_mail, terminate

Client = TestClient[web.Request, web.Application]
HOUR = 3600


def set_cookies(response: object) -> dict[str, SimpleCookie]:
    """Set-Cookie headers of a response by cookie name (attributes included)."""
    parsed: dict[str, SimpleCookie] = {}
    for header in response.headers.getall("Set-Cookie", []):  # type: ignore[attr-defined]
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        for name in cookie:
            parsed[name] = cookie
    return parsed


async def web_client(pipeline: Pipeline, **settings: object) -> Client:
    app = create_app(
        pipeline.settings_with(admin_token=ADMIN_TOKEN, **settings),
        pipeline.deps.engine,
        pipeline.pool,
        pipeline.deps.rules,
    )
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_login_sets_a_signed_session_cookie_not_the_token(client: Client) -> None:
    response = await log_in(client)
    assert response.status == 303 and response.headers["Location"] == "/dashboard"  # type: ignore[attr-defined]
    cookie = set_cookies(response)[SESSION_COOKIE][SESSION_COOKIE]
    assert ADMIN_TOKEN not in cookie.value.split(".") and cookie.value != ADMIN_TOKEN
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain http, no https public URL, no trusted proxy
    assert int(cookie["max-age"]) == 8 * HOUR
    page = await client.get("/dashboard", allow_redirects=False)
    assert page.status == 200 and "Abmelden" in await page.text()
    # the old scheme, the token itself as the cookie, no longer opens anything
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: ADMIN_TOKEN})
    assert (await client.get("/dashboard", allow_redirects=False)).status == 303


async def test_expired_forged_and_rotated_sessions_are_refused(client: Client) -> None:
    secret = ADMIN_TOKEN.encode()
    now = time.time()
    expired, _ = Sessions(secret, 8 * HOUR, clock=lambda: now - 9 * HOUR).issue()
    valid, _ = Sessions(secret, 8 * HOUR).issue()
    version, sid, issued, expires, mac = valid.split(".")
    forged = ".".join((version, sid, issued, str(int(expires) + 100 * HOUR), mac))
    other_token, _ = Sessions(b"the-previous-token", 8 * HOUR).issue()
    long_lived, _ = Sessions(secret, 100 * HOUR).issue()  # issued before the lifetime setting was shortened
    for value, expected in ((valid, 200), (expired, 303), (forged, 303), (other_token, 303), (long_lived, 200)):
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies({SESSION_COOKIE: value})
        response = await client.get("/dashboard", allow_redirects=False)
        assert response.status == expected
        if expected == 303:
            assert response.headers["Location"] == "/dashboard/login"
            assert set_cookies(response)[SESSION_COOKIE][SESSION_COOKIE].value == ""  # the stale cookie is let go
    stale = Sessions(secret, 8 * HOUR, clock=lambda: now - 9 * HOUR)
    assert stale.read(long_lived) is None  # a session outlives neither its own expiry nor the lifetime setting


async def test_logout_needs_csrf_clears_the_cookie_and_revokes_the_session(client: Client) -> None:
    await log_in(client)
    cookie = next(c for c in client.session.cookie_jar if c.key == SESSION_COOKIE).value
    page = await (await client.get("/dashboard")).text()
    found = re.search(rf'action="/dashboard/logout">\s*<input type="hidden" name="{CSRF_FIELD}" value="([^"]+)"', page)
    assert found
    assert (await client.post("/dashboard/logout", allow_redirects=False)).status == 403
    wrong = await client.post("/dashboard/logout", data={CSRF_FIELD: "x" + found.group(1)}, allow_redirects=False)
    assert wrong.status == 403
    response = await client.post("/dashboard/logout", data={CSRF_FIELD: found.group(1)}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/dashboard/login"
    assert set_cookies(response)[SESSION_COOKIE][SESSION_COOKIE].value == ""
    assert (await client.get("/dashboard", allow_redirects=False)).status == 303
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})  # a copy kept by someone else
    assert (await client.get("/dashboard", allow_redirects=False)).status == 303


async def test_login_without_a_valid_csrf_token_is_forbidden(client: Client) -> None:
    assert (await client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)).status == 403
    csrf = await login_form(client)
    wrong = await client.post(
        "/dashboard/login", data={"token": ADMIN_TOKEN, CSRF_FIELD: csrf[:-1]}, allow_redirects=False
    )
    assert wrong.status == 403
    # a token copied from another browser does not fit this browser's pre-login cookie
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({LOGIN_COOKIE: "A" * 22})
    copied = await client.post("/dashboard/login", data={"token": ADMIN_TOKEN, CSRF_FIELD: csrf}, allow_redirects=False)
    assert copied.status == 403 and SESSION_COOKIE not in set_cookies(copied)


async def test_login_failures_are_limited_per_client(pipeline: Pipeline) -> None:
    client = await web_client(pipeline, trusted_proxies="127.0.0.1/32")
    try:
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(10):
            response = await log_in(client, "guess", attacker)
            assert response.status == 303 and response.headers["Location"].endswith("error=1")  # type: ignore[attr-defined]
        limited = await log_in(client, ADMIN_TOKEN, attacker)  # the right token, too late: nothing learned
        assert limited.status == 429  # type: ignore[attr-defined]
        assert 1 <= int(limited.headers["Retry-After"]) <= 300  # type: ignore[attr-defined]
        assert SESSION_COOKIE not in set_cookies(limited)
        bearer = await client.get("/api/v1/summary", headers={**AUTH, **attacker})
        assert bearer.status == 429
        # another client behind the same proxy is not locked out
        assert (await log_in(client, ADMIN_TOKEN, {"X-Forwarded-For": "198.51.100.2"})).status == 303  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_forwarded_headers_are_believed_only_from_trusted_proxies(pipeline: Pipeline) -> None:
    client = await web_client(pipeline)  # no trusted proxies: a spoofed X-Forwarded-For changes nothing
    try:
        for number in range(10):
            await log_in(client, "guess", {"X-Forwarded-For": f"192.0.2.{number}", "X-Forwarded-Proto": "https"})
        response = await log_in(client, ADMIN_TOKEN, {"X-Forwarded-For": "192.0.2.99"})
        assert response.status == 429  # type: ignore[attr-defined]
    finally:
        await client.close()
    client = await web_client(pipeline, trusted_proxies="10.0.0.0/8, 127.0.0.1")
    try:
        proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.2.3, 192.0.2.1"}
        login, session = await log_in_over_tls(client, proxied)
        assert login["secure"] and session["secure"]
        assert (await client.get("/healthz", headers=proxied)).headers["Strict-Transport-Security"]
        assert "Strict-Transport-Security" not in (await client.get("/healthz")).headers
    finally:
        await client.close()
    client = await web_client(pipeline, public_url="https://channelshift.example")
    try:
        login, session = await log_in_over_tls(client, {})
        assert login["secure"] and session["secure"]
    finally:
        await client.close()


async def log_in_over_tls(client: Client, headers: dict[str, str]) -> tuple[Morsel[str], Morsel[str]]:
    """Log in as a browser behind https would; the pre-login and the session cookie as set."""
    form = await client.get("/dashboard/login", headers=headers)
    login_cookie = set_cookies(form)[LOGIN_COOKIE][LOGIN_COOKIE]
    csrf = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', await form.text())
    assert csrf
    # the test client speaks plain http and so keeps Secure cookies to itself: sent by hand, as a browser would
    response = await client.post(
        "/dashboard/login",
        data={"token": ADMIN_TOKEN, CSRF_FIELD: csrf.group(1)},
        headers={**headers, "Cookie": f"{LOGIN_COOKIE}={login_cookie.value}"},
        allow_redirects=False,
    )
    assert response.status == 303
    return login_cookie, set_cookies(response)[SESSION_COOKIE][SESSION_COOKIE]


def test_failure_limiter_forgets_old_failures_and_bounds_memory() -> None:
    now = [1000.0]
    limiter = FailureLimiter(3, 300, clock=lambda: now[0], max_clients=2)
    for _ in range(3):
        limiter.failed("a")
    assert limiter.retry_after("a") == 300
    now[0] += 200
    assert limiter.retry_after("a") == 100
    now[0] += 100
    assert limiter.retry_after("a") is None
    limiter.failed("b")
    limiter.failed("c")
    limiter.failed("d")
    assert set(limiter._failures) == {"c", "d"}


async def test_security_headers_on_every_response(client: Client, pipeline: Pipeline) -> None:
    health = create_health_app(pipeline.deps.engine, pipeline.pool, pipeline.deps.rules)
    async with TestClient(TestServer(health)) as side_listener:
        health_response = await side_listener.get("/metrics")
    responses = [
        health_response,
        await client.get("/healthz"),
        await client.get("/dashboard/login"),
        await client.get("/dashboard", allow_redirects=False),
        await client.get("/api/v1/summary"),
        await client.get("/static/dashboard.js"),
        await client.get("/r/" + "A" * 40, allow_redirects=False),
        await client.get("/no-such-page"),
    ]
    for response in responses:
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    page = await (await client.get("/dashboard/login")).text()
    nonce = re.search(r"'nonce-([^']+)'", responses[2].headers["Content-Security-Policy"])
    assert nonce and nonce.group(1) not in page  # a fresh nonce per response
    assert re.search(r'<style nonce="[^"]+">', page) and " style=" not in page


async def test_dashboard_login_draws_and_logout_in_chromium_under_the_csp(pipeline: Pipeline, tmp_path: Path) -> None:
    chromium_or_skip()
    await pipeline.send(make_mail(subject="Neue Adresse", body="Ich bin umgezogen."))
    await pipeline.work()
    app = create_app(
        pipeline.settings_with(admin_token=ADMIN_TOKEN), pipeline.deps.engine, pipeline.pool, pipeline.deps.rules
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with chromium_page(tmp_path / "profile") as page:
            await page.call("Page.navigate", url=f"{base}/dashboard")
            await page.wait_for("location.pathname === '/dashboard/login' && document.readyState === 'complete'")
            # the layout's <style> applies (its nonce fits the policy)
            assert await page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(245, 247, 249)"
            await page.evaluate(
                f"document.querySelector('input[name=token]').value = {ADMIN_TOKEN!r};"
                "document.querySelector('form').submit()"
            )
            await page.wait_for("location.pathname === '/dashboard' && document.readyState === 'complete'")
            drawn = await page.wait_for(
                "document.body.dataset.chartsDrawn === document.body.dataset.chartsExpected"
                " && document.body.dataset.chartsDrawn"
            )
            assert drawn == "5"  # every chart of the page (dashboard.js counts the canvases)
            assert await page.evaluate("window.__csp") == []
            cookie = await page.evaluate("document.cookie")
            assert SESSION_COOKIE not in cookie  # HttpOnly: scripts cannot read it
            await page.evaluate("document.querySelector('form.logout button').click()")
            await page.wait_for("location.pathname === '/dashboard/login' && document.readyState === 'complete'")
            assert await page.evaluate("window.__csp") == []
            await page.call("Page.navigate", url=f"{base}/dashboard")
            await page.wait_for("location.pathname === '/dashboard/login' && document.readyState === 'complete'")
    finally:
        await runner.cleanup()


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "", "192.168.1.5", "web.example", "*"))


def test_web_role_refuses_an_open_bind_without_a_token(tmp_path: Path, clean_redis: str) -> None:
    port = free_port()
    env = {
        **clean_env(),
        "CHANNELSHIFT_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
        "CHANNELSHIFT_REDIS_URL": clean_redis,
        "CHANNELSHIFT_VAR_DIR": str(tmp_path / "var"),
        "CHANNELSHIFT_WEB_LISTEN": f"0.0.0.0:{port}",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "services", "web"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("error: refusing to serve the API on non-loopback")
    process = subprocess.Popen(
        [sys.executable, "-m", "services", "web"],
        env={**env, "CHANNELSHIFT_ALLOW_OPEN_API": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, "web role exited"
                if time.monotonic() > deadline:
                    pytest.fail("web role with CHANNELSHIFT_ALLOW_OPEN_API=true did not start")
                time.sleep(0.2)
    finally:
        terminate([process])

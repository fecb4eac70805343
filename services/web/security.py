"""Who is asking (client address and scheme, X-Forwarded-* only from trusted proxies) and the security headers."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CSP_NONCE = web.RequestKey("csp_nonce", str)  # the nonce of this response's inline <style>


@dataclass(frozen=True)
class Client:
    address: str
    https: bool

    @property
    def limit_key(self) -> str:
        """The unit a rate limit counts: one IPv4 address, or one IPv6 /64 (what a single subscriber holds)."""
        try:
            address = ipaddress.ip_address(self.address)
        except ValueError:
            return self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


def _address(value: str | None) -> Address | None:
    try:
        return ipaddress.ip_address((value or "").strip())
    except ValueError:
        return None


def client_of(request: web.Request, trusted: tuple[Network, ...]) -> Client:
    """The client as seen by the nearest hop we do not trust.

    X-Forwarded-For is read from the right: each hop that is a trusted proxy vouches for the one before it;
    the first untrusted (or unreadable) entry is the client. Headers from an untrusted peer are ignored, so a
    citizen cannot pick the address the login limit counts.
    """
    peer = _address(request.remote)
    if peer is None or not any(peer in network for network in trusted):
        return Client(str(peer or request.remote or "unknown"), request.secure)
    client: Address = peer
    hops = [hop for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = address
        if not any(address in network for network in trusted):
            break
    protos = [p.strip().lower() for value in request.headers.getall("X-Forwarded-Proto", []) for p in value.split(",")]
    https = protos[-1] == "https" if protos and protos[-1] else request.secure  # the nearest proxy's word
    return Client(str(client), https)


def content_security_policy(nonce: str) -> str:
    # scripts only from our own static files (the dashboard's data is an inert JSON block); the layout's one
    # <style> carries the nonce; nothing may frame us, and forms post only back to us
    return (
        "default-src 'none'; script-src 'self'; "
        f"style-src 'self' 'nonce-{nonce}'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def security_headers_middleware(trusted: tuple[Network, ...]) -> Middleware:
    @web.middleware
    async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonce = secrets.token_urlsafe(16)
        request[CSP_NONCE] = nonce
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects and errors are responses too
            _apply(exc.headers, nonce, client_of(request, trusted).https)
            raise
        if not response.prepared:  # a streamed response has sent its headers already
            _apply(response.headers, nonce, client_of(request, trusted).https)
        return response

    return headers


def _apply(headers: MutableMapping[str, str], nonce: str, https: bool) -> None:
    headers.setdefault("Content-Security-Policy", content_security_policy(nonce))
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if https:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")

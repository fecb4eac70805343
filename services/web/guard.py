"""The web role's start-up check: no API open to the network by accident (non-loopback bind, no admin token)."""

from __future__ import annotations

import ipaddress

from services.config import Settings, split_host_port


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine; unknown names count as open."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, "", "*": it may resolve to (or mean) every interface


def refuse_open_bind(settings: Settings) -> None:
    """Exit 1 with a one-line reason when the web role would serve the API and dashboard to anyone."""
    host, _port = split_host_port(settings.web_listen)
    if settings.admin_token or settings.allow_open_api or is_loopback(host):
        return
    raise SystemExit(
        f"error: refusing to serve the API on non-loopback {settings.web_listen} without CHANNELSHIFT_ADMIN_TOKEN "
        "(set a token, listen on 127.0.0.1, or set CHANNELSHIFT_ALLOW_OPEN_API=true)"
    )

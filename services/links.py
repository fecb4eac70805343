"""Opaque click-tracking tokens for reply links: reply id + channel, signed, carrying no personal data."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

_MAC_BYTES = 10
# the one spelling make_token writes: URL-safe alphabet, no padding; anything else is someone else's string
_CANONICAL = re.compile(r"[A-Za-z0-9_-]{20,140}")


def _key(secret: bytes) -> bytes:
    # a key of its own, derived from the pseudonym key, so a token never reveals anything about pseudonyms
    return hmac.new(secret, b"channelshift-links-v1", hashlib.sha256).digest()


def make_token(secret: bytes, message_id: str, channel: str) -> str:
    payload = bytes.fromhex(message_id) + channel.encode("ascii")
    mac = hmac.new(_key(secret), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")


def canonical_bytes(token: str) -> bytes | None:
    """The bytes of an unpadded urlsafe-base64 token, only if it is spelled exactly as we encode them.

    base64 decoders skip junk characters, accept either alphabet and padding, and ignore the unused low bits
    of the last character, so many strings decode to one token; each of our tokens has one spelling.
    """
    if not _CANONICAL.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).decode().rstrip("=") == token else None


def read_token(secret: bytes, token: str) -> tuple[str, str] | None:
    """(message_id, channel) if the token is ours, intact and spelled exactly as make_token spells it, else None
    (a click must count once per reply and channel: see canonical_bytes)."""
    raw = canonical_bytes(token)
    if raw is None or len(raw) <= 16 + _MAC_BYTES:
        return None
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    expected = hmac.new(_key(secret), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        channel = payload[16:].decode("ascii")
    except UnicodeDecodeError:
        return None
    return payload[:16].hex(), channel

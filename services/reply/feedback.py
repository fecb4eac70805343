"""Staff feedback links on delivered originals: signed expiring tokens and the footer part that carries one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import time
from dataclasses import dataclass

from services.config import Settings
from services.links import canonical_bytes
from services.reply.original import with_routing_headers

FEEDBACK_HEADER = "X-Channelshift-Feedback"
PATH = "/f/"
_MAC_BYTES = 16  # a token grants a write (unlike a click token), so the full 128 bits
_ID_BYTES = 16
_EXPIRY = struct.Struct(">I")
# the one spelling make_token writes: URL-safe alphabet, no padding
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_FIELD = re.compile(rb"^content-", re.IGNORECASE)
FOOTER = "Falsch zugeordnet? Richtiges Anliegen melden / Misrouted? Report the right category: {url}"


@dataclass(frozen=True)
class FeedbackToken:
    message_id: str
    category: str  # the decision's category when the original was delivered
    expires_at: int  # Unix seconds

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def _key(secret: bytes) -> bytes:
    # its own key derived from the pseudonym key: a feedback token says nothing about pseudonyms or click tokens
    return hmac.new(secret, b"channelshift-feedback-v1", hashlib.sha256).digest()


def make_token(secret: bytes, message_id: str, category: str, expires_at: int) -> str:
    payload = bytes.fromhex(message_id) + _EXPIRY.pack(expires_at) + category.encode("ascii")
    mac = hmac.new(_key(secret), payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")


def read_token(secret: bytes, token: str) -> FeedbackToken | None:
    """The token's content if it is ours, intact and spelled as make_token spells it (expired or not), else None."""
    raw = canonical_bytes(token)
    head = _ID_BYTES + _EXPIRY.size
    if raw is None or len(raw) <= head + _MAC_BYTES:
        return None
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(_key(secret), payload, hashlib.sha256).digest()[:_MAC_BYTES]):
        return None
    try:
        category = payload[head:].decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _CATEGORY.fullmatch(category):
        return None
    (expires_at,) = _EXPIRY.unpack(payload[_ID_BYTES:head])
    return FeedbackToken(payload[:_ID_BYTES].hex(), category, expires_at)


def feedback_url(settings: Settings, message_id: str, category: str, now: float | None = None) -> str:
    expires_at = int(time.time() if now is None else now) + settings.feedback_days * 86400
    token = make_token(settings.effective_pseudonym_key, message_id, category, expires_at)
    return f"{settings.effective_feedback_base_url}{PATH}{token}"


def with_footer_part(raw: bytes, line: str) -> bytes:
    """The mail as multipart/mixed: its own body untouched as the first part, `line` as a second text part.

    The top-level Content-* fields move into the first part, so the citizen's text, its encoding and its
    attachments keep every byte; only the envelope of parts around them is new.
    """
    match = _HEADER_END.search(raw)
    head, body = (raw[: match.start()], raw[match.end() :]) if match else (raw.rstrip(b"\r\n"), b"")
    fields: list[list[bytes]] = []
    for line_bytes in head.splitlines():
        if line_bytes[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line_bytes)  # a folded continuation belongs to the field above
        else:
            fields.append([line_bytes])
    content = [b"\r\n".join(f) for f in fields if _CONTENT_FIELD.match(f[0])]
    kept = [
        b"\r\n".join(f)
        for f in fields
        if not _CONTENT_FIELD.match(f[0]) and not f[0].lower().startswith(b"mime-version:")
    ]
    boundary = "cs-feedback-" + secrets.token_hex(12)
    while boundary.encode() in raw:  # a boundary must not occur in what it encloses (RFC 2046 5.1.1)
        boundary = "cs-feedback-" + secrets.token_hex(12)
    footer = base64.encodebytes(line.encode()).replace(b"\n", b"\r\n")
    parts = [
        *kept,
        b"MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode(),
        b"",
        b"--" + boundary.encode(),
        *content,
        b"",
        body,  # the CRLF before the next delimiter belongs to the delimiter (RFC 2046 5.1.1)
        b"--" + boundary.encode(),
        b'Content-Type: text/plain; charset="utf-8"',
        b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: inline",
        b"Content-Description: channelshift feedback",
        b"",
        footer.rstrip(b"\r\n"),
        b"--" + boundary.encode() + b"--",
        b"",
    ]
    return b"\r\n".join(parts)


def staff_original(
    settings: Settings, message_id: str, category: str, raw: bytes, headers: dict[str, str]
) -> tuple[dict[str, str], bytes]:
    """The routing headers (plus the feedback link when enabled) and the original as staff receive it."""
    if not settings.feedback_links:
        return headers, with_routing_headers(raw, headers)
    url = feedback_url(settings, message_id, category)
    headers = {**headers, FEEDBACK_HEADER: url}
    return headers, with_footer_part(with_routing_headers(raw, headers), FOOTER.format(url=url))

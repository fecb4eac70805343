"""Build the reply MIME message with RFC 3834 headers; every header value is single-line and capped."""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from services.mail import InboundMail, single_line
from services.reply.render import RenderedReply

_MSGID = re.compile(r"<[^<>\s\"\\]{1,250}@[^<>\s\"\\]{1,250}>")


def safe_header(value: str, limit: int = 200) -> str:
    """Strip CR/LF and control characters *after* decoding, then cap: nothing can start a new header."""
    cleaned = "".join(ch for ch in value if ch >= " " and ch != "\x7f")
    return single_line(cleaned, limit)


def message_ids(values: list[str]) -> list[str]:
    """Only well-formed <id@host> tokens survive; anything else from the inbound mail is dropped."""
    found: list[str] = []
    for value in values:
        found.extend(_MSGID.findall(safe_header(value, 4000)))
    return found


def threading_headers(inbound: InboundMail) -> tuple[str | None, str | None]:
    """(In-Reply-To, References) for a reply to `inbound`, sanitized and capped."""
    original = message_ids([inbound.message_id or ""])
    if not original:
        return None, None
    chain = list(dict.fromkeys([*message_ids(list(inbound.references))[-8:], original[0]]))
    while len(" ".join(chain)) > 1900:
        chain.pop(0)
    return original[0], " ".join(chain)


def compose_reply(
    rendered: RenderedReply,
    *,
    in_reply_to: str | None,
    references: str | None,
    from_name: str,
    from_address: str,
    to_address: str,
    reply_message_id: str,
) -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(display_name=safe_header(from_name, 100), addr_spec=from_address)
    message["To"] = Address(addr_spec=to_address)
    message["Subject"] = safe_header(rendered.subject, 250)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = reply_message_id
    if in_reply_to:
        message["In-Reply-To"] = " ".join(message_ids([in_reply_to])[:1])
        message["References"] = " ".join(message_ids([references or in_reply_to]))
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message["Precedence"] = "bulk"
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    # after set_content(), which drops every Content-* header set before it
    message["Content-Language"] = rendered.language if rendered.language == "de" else f"{rendered.language}, de"
    return message

"""Build the reply MIME message with RFC 3834 headers; every header value is single-line and capped."""

from __future__ import annotations

import functools
import os
import re
from datetime import UTC, datetime
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import Compat32
from email.utils import format_datetime, formataddr

from services.domain import is_mailbox
from services.mail import InboundMail, single_line
from services.reply.render import RenderedReply

_MSGID = re.compile(r"<[^<>\s\"\\]{1,250}@[^<>\s\"\\]{1,250}>")
_PLAIN_VALUE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


class QuickFold(Compat32):
    """compat32 that writes a short header of plain ASCII words as it is.

    compat32 runs every header through `email.header.Header`, which returns such a value unchanged; skipping it
    halves the cost of flattening a reply (bench/bench_private_apis.py). Only the policy's public `fold` and
    `fold_binary` are overridden (the methods a Policy subclass is documented to implement), so nothing here
    depends on compat32's internals; tests/test_replies.py checks the bytes equal stock compat32's.
    """

    def _plain(self, name: str, value: object) -> str | None:
        if (
            isinstance(value, str)
            and len(name) + 2 + len(value) <= (self.max_line_length or 78)
            and _PLAIN_VALUE.fullmatch(value)
        ):
            return f"{name}: {value}{self.linesep}"
        return None

    def fold(self, name: str, value: str) -> str:
        plain = self._plain(name, value)
        return str(super().fold(name, value)) if plain is None else plain

    def fold_binary(self, name: str, value: str) -> bytes:
        plain = self._plain(name, value)
        return bytes(super().fold_binary(name, value)) if plain is None else plain.encode("ascii")


REPLY_POLICY = QuickFold(linesep="\r\n")
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP


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


def _encoded(value: str, name: str) -> str:
    return value if value.isascii() else _encoded_words(value, name)


@functools.lru_cache(maxsize=256)
def _encoded_words(value: str, name: str) -> str:
    """A non-ASCII value as RFC 2047 words on one line; the policy folds it at the spaces between the words.

    `email.header` encodes one character at a time and re-measures the line for each (quadratic in the value);
    reply subjects come from a few templates, so each one is encoded once per process.
    """
    # 76: each word stays within RFC 2047's 75 characters, which compat32's 78 would exceed on continuation lines
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=76).replace("\r\n", "")


def _text_part(content: str, subtype: str) -> MIMEText:
    part = MIMEText(content, subtype, _charset=_UTF8_QP, policy=REPLY_POLICY)  # type: ignore[arg-type]
    del part["MIME-Version"]  # only the top level carries it
    return part


def compose_reply(
    rendered: RenderedReply,
    *,
    in_reply_to: str | None,
    references: str | None,
    from_name: str,
    from_address: str,
    to_address: str,
    reply_message_id: str,
) -> Message:
    """multipart/alternative (text, HTML), both quoted-printable UTF-8; non-ASCII headers as RFC 2047 words.

    Built with the compat32 classes: the same wire format as the `email.policy` API at a fifth of the cost,
    which matters once per reply. Raises ValueError for an address that cannot go into a header as it is.
    """
    for address in (from_address, to_address):
        if not address.isascii() or not is_mailbox(address):
            raise ValueError("address cannot be written into a reply header")
    # Our own boundary, so the generator does not make one and compile a regex for it on every reply. "=_" never
    # occurs in quoted-printable text, and both parts are quoted-printable: it cannot collide with the content.
    message = MIMEMultipart("alternative", boundary=f"=_{os.urandom(16).hex()}", policy=REPLY_POLICY)
    message["From"] = formataddr((safe_header(from_name, 100), from_address), charset="utf-8")
    message["To"] = to_address
    message["Subject"] = _encoded(safe_header(rendered.subject, 250), "Subject")
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = reply_message_id
    if in_reply_to:
        message["In-Reply-To"] = " ".join(message_ids([in_reply_to])[:1])
        message["References"] = " ".join(message_ids([references or in_reply_to]))
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message["Precedence"] = "bulk"
    message["Content-Language"] = rendered.language if rendered.language == "de" else f"{rendered.language}, de"
    message.attach(_text_part(rendered.text, "plain"))
    message.attach(_text_part(rendered.html, "html"))
    return message

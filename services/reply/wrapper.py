"""The wrapper for staff when a relay refuses an original: a new RFC-clean mail with the original attached."""

from __future__ import annotations

import base64
import contextlib
import email
import re
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.policy import SMTP, compat32
from email.utils import formatdate, getaddresses
from io import BytesIO

from services.mailbounds import bound
from services.reply.original import strip_our_headers

MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
RFC822 = "message/rfc822"
OCTET_STREAM = "application/octet-stream"

# utf8=False: every non-ASCII header is RFC 2047-encoded; refold_source="all": also the ones given as text
_FOLD = SMTP.clone(refold_source="all")
# compat32 keeps the original's headers and parts as they are unless we change them; no refolding (0)
_INNER = compat32.clone(linesep="\r\n", max_line_length=0)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_FOLDED = re.compile(r"\r?\n(?=[ \t])")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")


@dataclass(frozen=True)
class Wrapper:
    data: bytes
    form: str  # how the original is attached: RFC822 or OCTET_STREAM
    reencoded: bool  # RFC822 only: lines were folded or parts re-encoded to pass the relay


def is_clean(data: bytes) -> bool:
    """7-bit without NUL, CRLF line ends only, no line longer than 998 bytes: what the strictest relay takes."""
    if not data.isascii() or b"\0" in data:
        return False
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:  # a bare CR or LF
        return False
    return max(map(len, data.split(b"\r\n"))) <= MAX_LINE


def _text(value: str) -> str:
    """A header value from compat32 (8-bit bytes kept as surrogates) as text: UTF-8 if it is, else Latin-1."""
    raw = value.encode("ascii", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _fold_at_spaces(name: str, value: str, limit: int = 78) -> str | None:
    """An ASCII value folded at its whitespace so every line fits; None if one word alone is too long."""
    lines: list[str] = []
    current = f"{name}:"
    for word in value.split():
        if len(current) + 1 + len(word) > limit and current != f"{name}:":
            lines.append(current)
            current = " " + word
        else:
            current += " " + word
    lines.append(current)
    if any(len(line) > MAX_LINE for line in lines):
        return None
    return "\r\n".join(lines)[len(name) + 2 :]


def _clean_header(name: str, value: str) -> str | None:
    """The value of a header that is not 7-bit/998-clean, made so; None if it already is."""
    if (
        value.isascii()
        and "\0" not in value
        and all(len(line) <= MAX_LINE - len(name) - 2 for line in value.splitlines())
    ):
        return None
    text = _CONTROLS.sub(" ", _FOLDED.sub("", _text(value)))
    if text.isascii():
        at_spaces = _fold_at_spaces(name, text)
        if at_spaces is not None:
            return at_spaces
    # non-ASCII, or an overlong word: encoded-words (the email package splits them at 78 columns)
    folded: str = _FOLD.fold(name, text.strip())
    return folded[len(name) + 1 :].strip(" \t\r\n")


def _clean_headers(part: Message) -> None:
    items = list(part.raw_items())
    cleaned = [_clean_header(name, value) for name, value in items]
    if all(value is None for value in cleaned):
        return
    # all fields out and back in their order: only the changed values differ
    for name in {name for name, _value in items}:
        del part[name]
    for (name, original), value in zip(items, cleaned, strict=True):
        part.set_raw(name, original if value is None else value)


def _payload_is_clean(text: str) -> bool:
    # compat32 hands out an 8-bit payload decoded with its charset, so 8-bit content shows as non-ASCII here
    if not text.isascii() or "\0" in text:
        return False
    data = text.encode("ascii")
    # the generator writes a payload's lines with CRLF whatever they ended with
    return all(len(line) <= MAX_LINE for line in re.split(rb"\r\n|\r|\n", data))


def _clean_payload(part: Message) -> None:
    """Re-encode a leaf whose payload is 8-bit or has overlong lines as base64 (the same bytes once decoded)."""
    payload = part.get_payload()
    if not isinstance(payload, str) or _payload_is_clean(payload):
        return
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        data = payload.encode("utf-8", "surrogateescape")
    if part.get("Content-Type") is None:
        # an 8-bit body of a mail without MIME headers: say what it probably is, or readers show mojibake
        try:
            data.decode("utf-8")
            part["Content-Type"] = 'text/plain; charset="utf-8"'
        except UnicodeDecodeError:
            part["Content-Type"] = 'text/plain; charset="unknown-8bit"'
    del part["Content-Transfer-Encoding"]
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(base64.encodebytes(data).decode("ascii"))


def _clean_preamble(part: Message) -> None:
    for attribute in ("preamble", "epilogue"):
        text = getattr(part, attribute)
        if text and not _payload_is_clean(text):
            # text outside the parts is not shown by mail programs (RFC 2046 5.1.1)
            setattr(part, attribute, "")


def _clean_header_block(head: bytes) -> bytes | None:
    """A CRLF header block with its unclean fields refolded or encoded, the others byte for byte; None if unfixable."""
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    out: list[bytes] = []
    for lines in fields:
        if all(len(line) <= MAX_LINE for line in lines) and is_clean(b"\r\n".join(lines)):
            out.extend(lines)
            continue
        name, colon, value = b"\r\n".join(lines).partition(b":")
        if not colon or not re.fullmatch(rb"[!-9;-~]+", name):
            return None
        text = value.decode("ascii", "surrogateescape").lstrip(" \t")
        out.append(name + b": " + (_clean_header(name.decode(), text) or text).encode("ascii"))
    return b"\r\n".join(out)


def clean_original(raw: bytes) -> tuple[bytes, bool] | None:
    """The original as a clean message/rfc822 body, and whether it had to change; None if it cannot be made so."""
    if is_clean(raw):
        return raw, False
    # the common case, an overlong or 8-bit header above a clean body, without parsing the MIME tree
    # (re-generating a 100,000-part mail takes the email package half a minute)
    head, separator, body = raw.partition(b"\r\n\r\n")
    if separator and is_clean(body):
        with contextlib.suppress(UnicodeEncodeError):
            cleaned = _clean_header_block(head)
            if cleaned is not None and is_clean(cleaned):
                return cleaned + separator + body, True
    if bound(raw).defects:
        # a parser bomb (bare-CR boundaries, millions of lines): re-generating it would cost minutes and gigabytes,
        # so it goes to staff attached as a file, as it came
        return None
    try:
        message = email.message_from_bytes(raw, policy=_INNER)
        for part in message.walk():
            _clean_headers(part)
            if part.is_multipart():
                _clean_preamble(part)
            else:
                _clean_payload(part)
        if message.get("Content-Transfer-Encoding") is not None and message.get("MIME-Version") is None:
            message["MIME-Version"] = "1.0"
        buffer = BytesIO()
        BytesGenerator(buffer, mangle_from_=False, policy=_INNER).flatten(message)
        data = buffer.getvalue()
    except (RecursionError, Exception):
        # a 1,000-deep MIME tree or anything the parser chokes on: attached as a file instead
        return None
    return (data, True) if is_clean(data) else None


def _header(head: bytes, name: str) -> str | None:
    """The first field `name` of the original's header block, unfolded and decoded, control characters removed."""
    found = re.search(rb"^" + name.encode() + rb":[ \t]*((?:.*)(?:\r?\n[ \t].*)*)", head, re.IGNORECASE | re.MULTILINE)
    if not found:
        return None
    value = _FOLDED.sub("", found.group(1).decode("utf-8", "replace"))
    with contextlib.suppress(Exception):  # a broken encoded-word stays as it is
        value = str(make_header(decode_header(value)))
    return " ".join(_CONTROLS.sub(" ", value).split())


def _explanation(message_id: str, reason: str, form: str, reencoded: bool) -> str:
    if form == RFC822 and not reencoded:
        how_de = "Sie ist unverändert als E-Mail angehängt."
        how_en = "It is attached unchanged as a message."
    elif form == RFC822:
        how_de = (
            "Sie ist als E-Mail angehängt; überlange Zeilen wurden umbrochen und Teile mit 8-Bit-Inhalt oder "
            "überlangen Zeilen neu kodiert (Base64), damit das Relay sie annimmt. Der Inhalt ist derselbe."
        )
        how_en = (
            "It is attached as a message; overlong lines were folded and parts with 8-bit content or overlong "
            "lines re-encoded (base64) so that the relay takes it. The content is the same."
        )
    else:
        how_de = (
            "Sie ließ sich nicht als E-Mail-Anhang (message/rfc822) darstellen und ist deshalb unverändert als "
            "Datei original.eml (application/octet-stream, Base64) angehängt; jedes Mail-Programm kann sie öffnen."
        )
        how_en = (
            "It could not be attached as a message (message/rfc822) and is attached unchanged as the file "
            "original.eml (application/octet-stream, base64) instead; any mail program opens it."
        )
    return (
        f"Diese E-Mail ist bei channelshift eingegangen (Kennung {message_id}), aber das Mail-Relay hat sie in "
        f"ihrer ursprünglichen Form abgelehnt ({reason}). {how_de}\n\n"
        f"This e-mail was received by channelshift (id {message_id}), but the mail relay refused it as it was "
        f"({reason}). {how_en}\n"
    )


def build_wrapper(
    raw: bytes,
    routing: dict[str, str],
    *,
    message_id: str,
    reason: str,
    from_address: str,
    recipients: list[str],
    hostname: str,
) -> Wrapper:
    """A new multipart/mixed mail: the routing headers, an explanation for staff, the original attached.

    `reason` must carry no personal data (it is a code like "relay answered 500"). The result is always
    7-bit and 998-clean; the original inside is byte-identical when it already was, re-encoded when that
    suffices, and attached as application/octet-stream (base64) otherwise.
    """
    original = strip_our_headers(raw)
    cleaned = clean_original(original)
    form = RFC822 if cleaned is not None else OCTET_STREAM
    reencoded = cleaned is not None and cleaned[1]
    match = _HEADER_END.search(original)
    head = original[: match.start()] if match else original[:100_000]

    outer = EmailMessage(policy=SMTP)
    outer["From"] = f"channelshift <{from_address}>"
    plain = [r for r in recipients if _PLAIN_ADDRESS.fullmatch(r)]
    outer["To"] = ", ".join(plain) if plain else "undisclosed-recipients:;"
    subject = (_header(head, "Subject") or "")[:200]
    outer["Subject"] = f"[Original als Anhang] {subject}".strip()
    outer["Date"] = formatdate(usegmt=True)
    outer["Message-ID"] = f"<{message_id}.wrapper@{hostname}>"
    sender = getaddresses([_header(head, "From") or ""])
    if sender and _PLAIN_ADDRESS.fullmatch(sender[0][1]):
        # staff answer the citizen, not the gateway
        outer["Reply-To"] = sender[0][1]
    for name, value in routing.items():
        outer[name] = " ".join(_CONTROLS.sub(" ", value).split())
    outer["X-Channelshift-Wrapped"] = form + (" (re-encoded)" if reencoded else "")
    outer["X-Channelshift-Refused"] = reason
    outer.set_content(_explanation(message_id, reason, form, reencoded), cte="quoted-printable")
    if cleaned is not None:
        part = EmailMessage(policy=SMTP)
        part["Content-Type"] = RFC822
        part["Content-Disposition"] = 'attachment; filename="original.eml"'
        # a string payload of a message/* part is written as it is (the generator's path for HeaderParser output)
        part.set_payload(cleaned[0].decode("ascii"))
        outer.make_mixed()
        outer.attach(part)
    else:
        outer.add_attachment(original, maintype="application", subtype="octet-stream", filename="original.eml")
    data = outer.as_bytes()
    if not is_clean(data):
        raise ValueError("wrapper is not 7-bit/998-clean")
    return Wrapper(data, form, reencoded)

"""Raw bytes -> InboundMail: headers, sender's own text, attachments, automated-mail signals; never raises."""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from dataclasses import dataclass
from email.header import decode_header
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from selectolax.lexbor import LexborHTMLParser, LexborNode

from services.header_addresses import address_pairs, parsed_address
from services.mailbounds import PARSE_PREFIX_BYTES, bound, parse_bytes

MAX_PARTS = 500
MAX_DEPTH = 20
MAX_TEXT_CHARS = 200_000
MAX_HTML_DEPTH = 400
# the text of a letter fits in far less markup; the walk costs about 2 s per MB, so the rest is cut, flagged
MAX_HTML_CHARS = 300_000
MAX_HEADER_VALUE_CHARS = 4_000
MAX_ADDRESSES = 200
MAX_HEADER_BYTES = 100 * 1024  # Postfix's header_size_limit
# of all values of one address field together: 64 KB hold far more than MAX_ADDRESSES addresses
MAX_ADDRESS_HEADER_CHARS = 64 * 1024

_WS = re.compile(r"\s+")
AUTOMATED_LOCALPART = re.compile(
    r"^(mailer[-_]?daemon|post[-_]?master|no[-_.]?reply|do[-_.]?not[-_.]?reply|bounces?|listserv|majordomo"
    r"|owner-.+|.+-request|.+-owner|.+-admin|.+-bounces?)([+].*)?$",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"(undeliver|undelivered mail|delivery status notification|returned mail|mail delivery fail"
    r"|delivery failure|failure notice|nicht zustellbar|unzustellbar)",
    re.IGNORECASE,
)
# Subjects that only MTAs and feedback loops write; a citizen does not start a subject like this.
_SYSTEM_SUBJECT = re.compile(
    r"^\s*((fwd?|wg|aw|re):\s*)?(returned mail:|undelivered mail returned to sender|undeliverable:"
    r"|delivery status notification|mail delivery failed|delivery failure|failure notice"
    r"|warning: could not send message|nicht zustellbar:|unzustellbar:|loop alert:"
    r"|complaint about message from \d)",
    re.IGNORECASE,
)
_REPORT_PARTS = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "message/disposition-notification",
        "message/feedback-report",
    }
)
_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(automatische antwort|auto(matic)?[- ]?reply|autoreply|out of office|abwesenheitsnotiz"
    r"|otomatik yan[ıi]t|automatic reply|автоматический ответ|автоматична відповідь)\b",
    re.IGNORECASE,
)
# the dashed header lines of a forwarded or an Outlook-quoted message
_FORWARD_PHRASES = "original message|ursprüngliche nachricht|forwarded message|weitergeleitete nachricht"
_QUOTE_HEADER = re.compile(
    r"^\s*(am\s.{4,120}schrieb.{0,120}:|on\s.{4,120}wrote:|le\s.{4,120}a écrit\s*:"
    rf"|-{{2,}}\s*({_FORWARD_PHRASES})"
    r"|(von|from):\s.+\s(gesendet|sent):\s)",
    re.IGNORECASE,
)
# A forwarded message some clients (and people) close again: "-----", "--- Ende der weitergeleiteten Nachricht ---".
_FORWARD_START = re.compile(rf"^\s*-{{2,}}\s*({_FORWARD_PHRASES})", re.IGNORECASE)
# _FORWARD_START at the start of any line str.splitlines() gives, in one scan of the whole text. Its spaces are
# those that do not end a line: \s would run on across a long run of blank lines from each of its line starts
# and rescan it (quadratic).
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_SPACE_IN_LINE = rf"[^\S{_LINE_BREAKS}]"
_FORWARD_START_ANYWHERE = re.compile(
    rf"(?:^|(?<=[{_LINE_BREAKS}])){_SPACE_IN_LINE}*-{{2,}}{_SPACE_IN_LINE}*({_FORWARD_PHRASES})", re.IGNORECASE
)
_FORWARD_END = re.compile(
    r"^\s*(-{5,}|-{2,}\s*(ende der weitergeleiteten nachricht|end of forwarded message|end forwarded message)"
    r"\s*-*)\s*$",
    re.IGNORECASE,
)
# how far a closing line is looked for (a forwarded letter is rarely longer; it bounds the look-ahead's cost)
_FORWARD_END_WITHIN = 200
_OUTLOOK_BLOCK_START = re.compile(r"^\s*(von|from)\s*:\s*\S", re.IGNORECASE)
# the first line of an "Am <date> schrieb …:" / "On <date> … wrote:" header that a mail client wrapped in two
_WRAPPED_QUOTE_HEADER_START = re.compile(r"^\s*(am|on)\s", re.IGNORECASE)
_OUTLOOK_BLOCK_NEXT = re.compile(r"^\s*(gesendet|sent|datum|date)\s*:\s*\S", re.IGNORECASE)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class InboundMail:
    """What the classifier and reply policy see of a message. All strings are single-line where headers."""

    message_id: str | None = None
    subject: str = ""
    from_address: str = ""
    from_name: str = ""
    to_addresses: tuple[str, ...] = ()
    cc_addresses: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain"
    body_text: str = ""
    own_text: str = ""
    forwarded_text: str = ""  # closed forwarded blocks above the sender's own words (own_words skipped them)
    attachments: tuple[Attachment, ...] = ()
    automated_signals: tuple[str, ...] = ()
    addressed_to: tuple[str, ...] = ()  # To, Cc, Bcc and Resent-* addresses
    references: tuple[str, ...] = ()
    defects: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    @property
    def parse_limited(self) -> bool:
        return any(defect.startswith("limit:") for defect in self.defects)


# Signals of mail that only machines write about other mail: delivery, read and feedback reports and bounces.
# Their text is the machine's, so the safety rules do not read it; any other automated signal still lets a
# citizen's words through.
MACHINE_REPORT_SIGNALS = frozenset({"report", "bounce"})
# Mail that no citizen wrote to us: machine reports, and list traffic written to a list we are subscribed to.
# Only this is held (handed to the postmaster target); every other automated mail goes to staff, unanswered.
HELD_SIGNALS = MACHINE_REPORT_SIGNALS | {"list-traffic"}
# Every signal _automated_signals can give; rule files may name them (`automated: [report, bounce]`).
AUTOMATED_SIGNALS = frozenset(
    {
        "auto-submitted",
        "mailing-list",
        "list-traffic",
        "precedence",
        "auto-response-suppress",
        "autoreply-header",
        "vacation",
        "loop",
        "no-ack",
        "feedback-id",
        "spam",
        "report",
        "automated-sender",
        "bounce",
        "system-subject",
        "autoreply-subject",
    }
)


def is_machine_report(mail: InboundMail) -> bool:
    return bool(MACHINE_REPORT_SIGNALS.intersection(mail.automated_signals))


# A newsletter carries both: list headers (RFC 2369/2919) and bulk precedence. One of them alone is also set by
# mailing services that relay contact forms, or by a citizen's own client, so it says less about who wrote.
NEWSLETTER_SIGNALS = frozenset({"mailing-list", "precedence"})


def is_newsletter(mail: InboundMail) -> bool:
    return NEWSLETTER_SIGNALS.issubset(mail.automated_signals)


def single_line(text: str, limit: int = MAX_HEADER_VALUE_CHARS) -> str:
    """Collapse CR, LF and other whitespace runs to one space and cap the length."""
    if text.isprintable() and "  " not in text:
        # the common case, in a quarter of the time: the only whitespace a printable string holds is " "
        return text.strip(" ")[:limit]
    return _WS.sub(" ", text).strip()[:limit]


def decode_header_value(value: object) -> str:
    """Decode RFC 2047 encoded-words leniently; unknown charsets fall back instead of raising."""
    raw = str(value)
    if "=?" not in raw:
        # what decode_header returns for a value without an encoded-word: the value itself, one chunk
        return single_line(raw)
    try:
        chunks = decode_header(raw)
    except Exception:
        return single_line(raw)
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        out.append(_decode_bytes(chunk, charset))
    # decode_header drops the whitespace between plain and encoded chunks; rejoin sensibly.
    return single_line(_join_decoded(chunks, out))


def _join_decoded(chunks: list[tuple[bytes | str, str | None]], texts: list[str]) -> str:
    if len(chunks) <= 1:
        return "".join(texts)
    joined = ""
    for (_chunk, charset), text in zip(chunks, texts, strict=True):
        if joined and charset is None and not text.startswith(" ") and not joined.endswith(" "):
            joined += " "
        joined += text
    return joined


def _decode_bytes(data: bytes, charset: str | None) -> str:
    for candidate in (charset, "utf-8", "cp1252"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def _addresses(values: list[str]) -> tuple[str, ...]:
    found: list[str] = []
    capped: list[str] = []
    room = MAX_ADDRESS_HEADER_CHARS
    for value in values:
        if room <= 0:
            break
        capped.append(str(value)[:room])
        room -= len(capped[-1])
    try:
        pairs = address_pairs(capped)
    except Exception:
        return ()
    for _name, addr in pairs[:MAX_ADDRESSES]:
        addr = single_line(addr, 320).lower()
        if "@" in addr:
            found.append(addr)
    return tuple(found)


_HTML_BLOCK = frozenset({"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "table", "blockquote"})
_HTML_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})


# `[^<>]`: a `<` without its `>` ends the scan at the next `<`, so a run of them stays linear
_TAG = re.compile(r"<[^<>]*>")
_TAG_NAME = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]{0,15})")
# tags that close themselves or that the next sibling closes: they do not deepen the tree
_FLAT_TAGS = frozenset(
    {"br", "img", "hr", "meta", "link", "input", "p", "li", "td", "th", "tr", "option", "dt", "dd", "col", "wbr"}
)


def _nesting_depth(html: str) -> int:
    """An upper estimate of the element depth, in one linear scan (unclosed containers count as open)."""
    depth = deepest = 0
    for match in _TAG_NAME.finditer(html):
        if match.group(2).lower() in _FLAT_TAGS:
            continue
        if match.group(1):
            depth = max(depth - 1, 0)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def html_to_text(html: str) -> str:
    """Text of an HTML body; blockquotes and gmail/outlook quote blocks are prefixed with '> '.

    Lexbor (selectolax) parses in linear time; CPython's HTMLParser is quadratic on malformed markup (a
    200 KB body of `<p x='` took 100 s). The tree is walked with an explicit stack, so depth costs no
    recursion.
    """
    html = html[:MAX_HTML_CHARS]
    if _nesting_depth(html) > MAX_HTML_DEPTH:
        # HTML5 tree building is quadratic in nesting depth (20,000 nested <div> took 3 s): such markup is
        # no letter a person wrote, and its tags are dropped without a tree
        return _paragraphs(_TAG.sub(" ", html))
    root = LexborHTMLParser(html).root
    if root is None:
        return ""
    parts: list[str] = []
    stack: list[tuple[LexborNode, bool, int]] = [(root, False, 0)]
    while stack:
        node, leaving, quote = stack.pop()
        tag = node.tag or ""
        if leaving:
            parts.append("\n")
            continue
        if node.is_text_node:
            text = node.text_content or ""
            parts.append("\n".join("> " + line for line in text.split("\n")) if quote else text)
            continue
        if not node.is_element_node or tag in _HTML_SKIP:
            continue  # comments, doctype, scripts
        if tag == "br":
            parts.append("\n")
            continue
        attributes = node.attributes
        marks = " ".join(attributes.get(name) or "" for name in ("class", "id")).lower()
        inner_quote = quote + (tag == "blockquote" or "gmail_quote" in marks or "divrplyfwdmsg" in marks)
        if tag in _HTML_BLOCK:
            parts.append("\n")
            stack.append((node, True, quote))
        children = []
        child = node.first_child
        while child is not None:
            children.append(child)
            child = child.next
        stack.extend((child, False, inner_quote) for child in reversed(children))
    return _paragraphs("".join(parts).replace("\xa0", " "))


def _paragraphs(text: str) -> str:
    """Runs of blank lines become one paragraph break (line by line: `\\n\\s*\\n` backtracks on long blanks)."""
    lines: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            lines.append(line)
        elif lines and lines[-1]:
            lines.append("")
    return "\n".join(lines)


def own_words(text: str) -> str:
    """The sender's own words: drop '>' quoted lines and everything from a reply/forward header on.

    A forwarded block that is closed again ("-----") with the sender's text below it is skipped, not the end.
    """
    return own_words_and_forwarded(text)[0]


def forwarded_blocks(text: str) -> str:
    """The closed forwarded blocks `own_words` skipped, for the model's quoted-text features."""
    return own_words_and_forwarded(text)[1]


def own_words_and_forwarded(text: str) -> tuple[str, str]:
    """`own_words` and `forwarded_blocks` of a text from one pass over its lines."""
    # one scan in C first: the many mails without a forwarded header never look for a closing line
    may_close = _FORWARD_START_ANYWHERE.search(text) is not None
    kept, skipped = _split_own_words(text.splitlines(), may_close)
    return "\n".join(kept).strip(), "\n".join(skipped)


def _split_own_words(lines: list[str], may_close: bool) -> tuple[list[str], list[str]]:
    kept: list[str] = []
    skipped: list[str] = []
    skip_to = 0
    for index, line in enumerate(lines):
        if index < skip_to or line.lstrip().startswith(">"):
            continue
        if _QUOTE_HEADER.match(line):
            closed = _forward_end(lines, index) if may_close and _FORWARD_START.match(line) else None
            if closed is None:
                break
            skipped += lines[index : closed + 1]
            skip_to = closed + 1  # the sender wrote below a closed forwarded block: that text is theirs
            continue
        if _OUTLOOK_BLOCK_START.match(line) and any(
            _OUTLOOK_BLOCK_NEXT.match(following) for following in lines[index + 1 : index + 4]
        ):
            break
        # "Am 3. März 2026 um 10:00 schrieb X" is often wrapped over two lines.
        if (
            index + 1 < len(lines)
            and _WRAPPED_QUOTE_HEADER_START.match(line)
            and _QUOTE_HEADER.match(line + " " + lines[index + 1].strip())
        ):
            break
        kept.append(line)
    return kept, skipped


def _forward_end(lines: list[str], start: int) -> int | None:
    """The line closing the forwarded block opened at `start`, if the sender's own text follows it."""
    for index in range(start + 1, min(len(lines), start + _FORWARD_END_WITHIN)):
        if _FORWARD_END.match(lines[index]):
            following = next((lines[i] for i in range(index + 1, len(lines)) if lines[i].strip()), "")
            # text of the sender's own, not the next quoted or forwarded layer
            if (
                following
                and not following.lstrip().startswith(">")
                and not _QUOTE_HEADER.match(following)
                and not _OUTLOOK_BLOCK_START.match(following)
            ):
                return index
            return None
    return None


def _bare_from(values: list[str]) -> str:
    """A From without a domain, e.g. '<MAILER-DAEMON>', still tells us who sent it."""
    try:
        _name, addr = parsed_address(str(values[0])) if values else ("", "")
    except Exception:
        return ""
    return single_line(addr, 64).lower()


def _payload_text(part: Message) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    return _decode_bytes(payload[: MAX_TEXT_CHARS * 4], _content_charset(part))


# "type/subtype; charset=token" alone, the shape of nearly every text part: the charset is the token, lower-cased
_PLAIN_CHARSET = re.compile(r'\s*[^;"=\s]+\s*;\s*charset\s*=\s*("?)([A-Za-z0-9_.:+-]+)\1\s*', re.IGNORECASE)


def _content_charset(part: Message) -> str | None:
    """`part.get_content_charset()`, without the stdlib's full parameter parsing for the common shape."""
    value = part.get("content-type")
    if isinstance(value, str):
        if ";" not in value:
            return None
        plain = _PLAIN_CHARSET.fullmatch(value)
        if plain:
            return plain.group(2).lower()
    try:
        return part.get_content_charset()
    except Exception:
        return None


def _decoded_size(part: Message) -> int:
    """`len(part.get_payload(decode=True))`, for valid base64 with fewer copies of the payload.

    The stdlib splits the payload into a list of lines to join them again (about 1.5 times the payload besides
    the decoded bytes: a 25 MB attachment cost 85 MiB); `translate` drops the same CR and LF bytes in one copy.
    Anything else, broken base64 included, takes the stdlib's own path.
    """
    try:
        base64_payload = str(part.get("content-transfer-encoding", "")).lower() == "base64"
        payload = part.get_payload() if base64_payload else None
        if isinstance(payload, str) and payload.isascii():
            encoded = payload.encode("ascii").translate(None, b"\r\n")
            missing = len(encoded) % 4
            with contextlib.suppress(binascii.Error):
                # the padding decode_b (email._encoded_words) adds before its strict decode
                return len(base64.b64decode(encoded + b"==="[: 4 - missing] if missing else encoded, validate=True))
        decoded = part.get_payload(decode=True)
    except Exception:
        return 0
    return len(decoded) if isinstance(decoded, bytes) else 0


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type().lower()
    except Exception:
        return "application/octet-stream"


def _walk(root: Message, defects: list[str]) -> list[Message]:
    """Leaf parts, bounded in count and depth (iterative, so no RecursionError)."""
    leaves: list[Message] = []
    stack: list[tuple[Message, int]] = [(root, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_PARTS:
            defects.append(f"limit:parts>{MAX_PARTS}")
            break
        if part.is_multipart():
            if depth >= MAX_DEPTH:
                defects.append(f"limit:depth>{MAX_DEPTH}")
                continue
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend((child, depth + 1) for child in reversed(children) if isinstance(child, Message))
            continue
        leaves.append(part)
    return leaves


def _filename(part: Message) -> str | None:
    if "content-disposition" not in part and "name" not in str(part.get("content-type", "")).lower():
        # get_filename reads only Content-Disposition's filename and Content-Type's name: neither can be there
        return None
    try:
        name = part.get_filename()
    except Exception:
        return "unnamed"
    return decode_header_value(name)[:255] if name else None


# Rspamd's actions that mean "this is spam"; "no action", "greylist" and "soft reject" do not.
_RSPAMD_SPAM_ACTIONS = frozenset({"reject", "add header", "add_header", "rewrite subject", "rewrite_subject"})
_LIST_HEADERS = (
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-post",
    "list-owner",
    "list-archive",
)
_MAILTO = re.compile(r"<\s*mailto:([^>?\s]+)", re.IGNORECASE)
_LIST_ID = re.compile(r"<([^<>@\s]+)>")


def _is_spam_verdict(mail_headers: dict[str, list[str]]) -> bool:
    """A verdict of SpamAssassin, Rspamd or any filter writing X-Spam-Flag; one spam instance is enough.

    A forged header can only make a mail lose its reply, never gain one, so every instance counts.
    """
    if any(v.strip().lower().startswith("yes") for v in mail_headers.get("x-spam-flag", [])):
        return True
    # SpamAssassin: "Yes, score=15.2 required=5.0 tests=..."
    if any(v.strip().lower().startswith("yes") for v in mail_headers.get("x-spam-status", [])):
        return True
    # Rspamd: "default: True [15.20 / 15.00]; SYMBOL(1.0)[...]"
    if any(re.match(r"\s*default\s*:\s*true\b", v, re.IGNORECASE) for v in mail_headers.get("x-spamd-result", [])):
        return True
    return any(" ".join(v.lower().split()) in _RSPAMD_SPAM_ACTIONS for v in mail_headers.get("x-rspamd-action", []))


def _list_addresses(mail_headers: dict[str, list[str]]) -> set[str]:
    """The posting address of a list: List-Post's mailto, and List-Id's <name.host> read as name@host."""
    found = {m.lower() for v in mail_headers.get("list-post", []) for m in _MAILTO.findall(v)}
    for value in mail_headers.get("list-id", []):
        for list_id in _LIST_ID.findall(value):
            name, _, host = list_id.lower().partition(".")
            if name and "." in host:
                found.add(f"{name}@{host}")
    return found


def _automated_signals(
    mail_headers: dict[str, list[str]],
    content_type: str,
    from_address: str,
    subject: str,
    part_types: set[str],
    addressed_to: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """Every instance of a header is read: one instance saying "automated" wins over any number saying "no"."""
    signals: list[str] = []

    def values(name: str) -> list[str]:
        return [value.strip().lower() for value in mail_headers.get(name, [])]

    if any(value and not value.startswith("no") for value in values("auto-submitted")):
        signals.append("auto-submitted")
    if any(name in mail_headers for name in _LIST_HEADERS):
        signals.append("mailing-list")
        list_addresses = _list_addresses(mail_headers)
        if list_addresses and list_addresses.intersection(addressed_to):
            # written to the list, not to us: no citizen content addressed to the agency
            signals.append("list-traffic")
    if any(value in ("bulk", "junk", "list", "auto_reply") for value in values("precedence")):
        signals.append("precedence")
    if any(token in value for value in values("x-auto-response-suppress") for token in ("all", "oof", "autoreply")):
        signals.append("auto-response-suppress")
    if "x-autoreply" in mail_headers or "x-autorespond" in mail_headers:
        signals.append("autoreply-header")
    if "vacation" in values("x-apple-action"):
        signals.append("vacation")
    if "x-loop" in mail_headers:
        # any value: a mail that went round once already; our own replies may carry one
        signals.append("loop")
    if "no" in values("x-ack"):
        signals.append("no-ack")  # Mailman: the sender asked for no acknowledgement
    if "feedback-id" in mail_headers:
        signals.append("feedback-id")  # bulk senders' feedback-loop id (ESPs, newsletters)
    if _is_spam_verdict(mail_headers):
        signals.append("spam")
    if content_type == "multipart/report" or part_types & _REPORT_PARTS:
        signals.append("report")
    localpart = from_address.partition("@")[0]
    if localpart and AUTOMATED_LOCALPART.match(localpart):
        signals.append("automated-sender")
        if _BOUNCE_SUBJECT.search(subject):
            signals.append("bounce")
    if _SYSTEM_SUBJECT.match(subject):
        signals.append("system-subject")
    if _AUTOREPLY_SUBJECT.match(subject):
        signals.append("autoreply-subject")
    return tuple(signals)


def parse_mail(raw: bytes) -> InboundMail:
    """Parse leniently. Bad MIME, unknown charsets or absurd structures give defects, never exceptions."""
    try:
        bounded = bound(raw)
    except Exception as exc:
        # the scan is plain byte counting; should it ever fail, the start of the mail is still parsed
        return _parse(raw[:PARSE_PREFIX_BYTES], [f"unparseable:{type(exc).__name__}"])
    return _parse(bounded.raw, list(bounded.defects))


def _parse(raw: bytes, defects: list[str]) -> InboundMail:
    try:
        message = parse_bytes(raw)
    except RecursionError:
        defects.append("limit:nesting")
        message = BytesHeaderParser(policy=compat32).parsebytes(raw)
    except Exception as exc:
        defects.append(f"unparseable:{type(exc).__name__}")
        try:
            message = BytesHeaderParser(policy=compat32).parsebytes(raw)
        except Exception:
            return InboundMail(defects=tuple(defects))
    try:
        return _build(message, defects)
    except RecursionError:
        defects.append("limit:nesting")
    except Exception as exc:
        defects.append(f"unparseable:{type(exc).__name__}")
    return InboundMail(defects=tuple(defects))


def _build(message: Message, defects: list[str]) -> InboundMail:
    headers: list[tuple[str, str]] = []
    by_name: dict[str, list[str]] = {}
    raw_values: dict[str, list[str]] = {}
    header_chars = 0
    for name, value in message.items():
        raw_values.setdefault(str(name).lower(), []).append(str(value))
        if header_chars > MAX_HEADER_BYTES:
            continue  # past the limit only the raw values (for addresses) are kept, nothing is decoded
        header_chars += len(name) + len(str(value)) + 4
        if header_chars > MAX_HEADER_BYTES:
            defects.append(f"limit:header-size>{MAX_HEADER_BYTES}")
            continue
        decoded = decode_header_value(value)
        key = str(name).strip().lower()
        headers.append((key, decoded))
        by_name.setdefault(key, []).append(decoded)

    subject = by_name.get("subject", [""])[0]
    from_pairs = _addresses(raw_values.get("from", [])[:1])
    from_address = from_pairs[0] if from_pairs else _bare_from(raw_values.get("from", [])[:1])
    from_name = ""
    if raw_values.get("from"):
        try:
            from_name = decode_header_value(parsed_address(raw_values["from"][0])[0])[:200]
        except Exception:
            from_name = ""
    content_type = _content_type(message)

    plain: list[str] = []
    html: list[str] = []
    part_types: set[str] = set()
    attachments: list[Attachment] = []
    text_chars = 0
    for part in _walk(message, defects):
        part_type = _content_type(part)
        part_types.add(part_type)
        disposition = str(part.get("content-disposition", "")).lower()
        filename = _filename(part)
        is_attachment = disposition.startswith("attachment") or filename is not None
        if part_type in ("text/plain", "text/html") and not is_attachment:
            if text_chars > MAX_TEXT_CHARS:
                defects.append("limit:text")
                continue
            text = _payload_text(part)
            text_chars += len(text)
            (plain if part_type == "text/plain" else html).append(text)
            continue
        if part_type.startswith("message/") or part_type in ("text/rfc822-headers",):
            # delivery reports and forwarded messages: their content is not the sender's words
            continue
        attachments.append(Attachment(filename=filename or "unnamed", content_type=part_type, size=_decoded_size(part)))

    if not plain and any(len(h) > MAX_HTML_CHARS for h in html):
        defects.append("limit:html")
    body_text = "\n\n".join(plain) if plain else "\n\n".join(html_to_text(h) for h in html)
    body_text = body_text[:MAX_TEXT_CHARS]
    own_text, forwarded_text = own_words_and_forwarded(body_text)
    message_id = by_name.get("message-id", [None])[0]
    references = tuple(ref for ref in re.findall(r"<[^<>\s]{1,250}>", " ".join(by_name.get("references", []))))[-20:]
    to_addresses = _addresses(raw_values.get("to", []))
    cc_addresses = _addresses(raw_values.get("cc", []))
    other_recipients = _addresses(
        [v for name in ("bcc", "resent-to", "resent-cc", "resent-bcc") for v in raw_values.get(name, [])]
    )
    return InboundMail(
        message_id=single_line(message_id, 250) if message_id else None,
        subject=subject,
        from_address=from_address,
        from_name=from_name,
        to_addresses=to_addresses,
        cc_addresses=cc_addresses,
        headers=tuple(headers),
        content_type=content_type,
        body_text=body_text,
        own_text=own_text,
        forwarded_text=forwarded_text,
        attachments=tuple(attachments),
        automated_signals=_automated_signals(
            by_name, content_type, from_address, subject, part_types, (*to_addresses, *cc_addresses)
        ),
        addressed_to=(*to_addresses, *cc_addresses, *other_recipients)[:MAX_ADDRESSES],
        references=references,
        defects=tuple(dict.fromkeys(defects)),
    )

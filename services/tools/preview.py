"""Preview one mail: the worker's verdict and the exact reply it would send; nothing is sent, nothing stored."""

from __future__ import annotations

import email
import hashlib
from dataclasses import dataclass
from datetime import datetime
from email.message import Message as EmailMessage
from email.policy import default as default_policy
from zoneinfo import ZoneInfo

from services.classify.engine import RuleSet
from services.classify.envelope import assumed_envelope
from services.domain import Verdict
from services.mail import parse_mail
from services.reply.build import ReplyUnbuildable, build_reply, tracked_links
from services.reply.decide import decide
from services.reply.policy import PolicyConfig
from services.reply.render import ReplyRenderer

# the pseudonym only feeds the dedup window, which a preview cannot check; no key file is created for it
_PREVIEW_KEY = b"channelshift-preview"


@dataclass(frozen=True)
class Preview:
    """What the worker would decide for a mail, and the reply it would send (None when it sends none)."""

    verdict: Verdict
    received_at: datetime
    reply_language: str | None
    reply: EmailMessage | None
    reply_error: str | None
    delivery: str


def preview(
    ruleset: RuleSet,
    renderer: ReplyRenderer,
    raw: bytes,
    *,
    received_at: datetime,
    hostname: str,
    mail_from: str | None = None,
    rcpt_to: list[str] | None = None,
    policy: PolicyConfig | None = None,
    public_url: str | None = None,
) -> Preview:
    """Decide with the worker's own function and build the reply with its own builder, on a row held in memory.

    The envelope is the one `rules explain` assumes (From header, served To/Cc) unless given; `public_url`
    turns links into click-tracking redirects as the worker's are (their tokens name this preview's id).
    """
    mail = parse_mail(raw)
    envelope = assumed_envelope(ruleset, mail, mail_from, rcpt_to, received_at)
    served = [address for address in envelope.rcpt_tos if ruleset.is_served(address)]
    mailbox = (served or list(envelope.rcpt_tos) or [""])[0]
    # a stable id per file, so two previews of one mail print the same reference
    message_id = hashlib.sha256(raw).hexdigest()[:32]
    verdict = decide(mail, envelope, ruleset, policy or PolicyConfig(), _PREVIEW_KEY)
    settings = ruleset.settings
    delivery = None
    target = verdict.deliver_to
    delivery = f"{target}: {settings.targets.get(target) or 'the original recipients'}"
    reply = error = language = None
    if verdict.reply and verdict.template is not None:
        language = renderer.reply_language(verdict.template, verdict.language, settings)
        links = tracked_links(settings, public_url, _PREVIEW_KEY, message_id) if public_url else None
        try:
            reply = build_reply(
                renderer,
                settings,
                template=verdict.template,
                language=verdict.language,
                received_at=received_at,
                message_id=message_id,
                from_address=mailbox,
                to_address=envelope.mail_from,
                reply_message_id=f"<reply.{message_id}@{hostname}>",
                in_reply_to=verdict.in_reply_to,
                references=verdict.references,
                links=links,
            )
        except ReplyUnbuildable as exc:
            error = str(exc)
    return Preview(verdict, received_at, language, reply, error, delivery)


def format_preview(result: Preview, zone: str, *, html: bool = False, raw: bool = False) -> str:
    """The verdict as `key: value` lines, then the reply: headers as sent and every part decoded (or raw bytes)."""
    verdict = result.verdict
    local = result.received_at.astimezone(ZoneInfo(zone))
    if verdict.suppressed is not None:
        reply_line = f"no - suppressed: {verdict.suppressed}"
    elif verdict.template is None:
        reply_line = "no (no reply template for this category)"
    elif result.reply_error is not None:
        reply_line = f"FAILS: {result.reply_error}"
    else:
        reply_line = "yes (the dedup window and daily cap need the database and are not checked here)"
    languages = f" (reply in {result.reply_language}" + (" + de)" if result.reply_language != "de" else ")")
    lines = [
        f"received:   {local:%Y-%m-%d %H:%M} {zone} ({local:%A})",
        f"category:   {verdict.category}",
        f"channel:    {verdict.channel}",
        f"rule:       {verdict.rule_id} (path {verdict.path}, confidence {verdict.confidence})",
        f"template:   {verdict.template or '-'}",
        f"language:   {verdict.language}" + (languages if result.reply_language else ""),
        f"suppressed: {verdict.suppressed or '-'}",
        f"reply:      {reply_line}",
        f"priority:   {verdict.priority}",
        f"delivery:   {result.delivery}" + (" (held: the rule says deliver: false)" if verdict.held else ""),
        f"ruleset:    {verdict.ruleset_version}",
    ]
    if result.reply is None:
        return "\n".join(lines)
    data = result.reply.as_bytes()
    lines += ["", "=" * 72]
    if raw:
        return "\n".join(lines) + "\n" + data.decode("ascii", errors="replace")
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii", errors="replace")
    lines += head.split("\r\n")
    parsed = email.message_from_bytes(data, policy=default_policy)
    lines.append(f"(Subject, decoded: {parsed['Subject']})")
    for number, part in enumerate(parsed.walk(), 1):
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        encoding = part.get("Content-Transfer-Encoding", "7bit")
        if kind == "text/html" and not html:
            size = len(part.get_payload(decode=True) or b"")
            lines += ["", f"--- part {number - 1}: {kind}, {encoding}, {size} bytes (--html shows it) ---"]
            continue
        lines += ["", f"--- part {number - 1}: {kind}, {encoding}, decoded ---", str(part.get_content()).rstrip()]
    return "\n".join(lines)

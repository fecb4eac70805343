"""aiosmtpd handler: RCPT checks, durable store before 250 (group commit, then enqueue); never raises to the session."""

from __future__ import annotations

import ipaddress
import os
import re
import time
import unicodedata
import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine

from services.domain import is_mailbox, rejected
from services.gateway import replies
from services.gateway.commit import Count, EnqueueBatch, GroupCommitter
from services.gateway.spool import Spool
from services.metrics import STORE_SECONDS
from services.ruleset.reload import RuleSetHolder
from services.store.models import MessageState, utcnow

log = structlog.get_logger(__name__)


def envelope_sender(mail_from: str | None) -> str:
    """The reverse-path without brackets; aiosmtpd reports the null sender as '<>', we store ''."""
    sender = (mail_from or "").strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1]
    return sender[:512]


_DEMO_HEADER = re.compile(rb"^X-Channelshift-Demo-Received:[ \t]*(\S+)\r?$", re.IGNORECASE | re.MULTILINE)


def _is_loopback(peer: Any) -> bool:
    try:
        return ipaddress.ip_address(str(peer[0])).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


def demo_received_at(content: bytes) -> datetime | None:
    """The backdated arrival of a `channelshift demo-traffic` mail (honoured only when configured, from loopback)."""
    head = content.split(b"\r\n\r\n", 1)[0][:20_000]
    found = _DEMO_HEADER.search(head)
    if not found:
        return None
    try:
        moment = datetime.fromisoformat(found.group(1).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return moment if moment.tzinfo else None


def new_message_id() -> str:
    """128 random bits as 32 hex digits (what uuid4().hex gave, without building a UUID object per mail)."""
    return os.urandom(16).hex()


def new_message_row(
    *, message_id: str, received_at: datetime, protocol: str, mail_from: str, recipients: list[str], content: bytes
) -> dict[str, object]:
    """A `message` table row for a just-received mail (a plain dict: the gateway inserts it with Core)."""
    rcpt_tos = [r.lower() for r in recipients]
    return {
        "id": message_id,
        "received_at": received_at,
        "updated_at": received_at,
        "protocol": protocol,
        "mail_from": mail_from,
        "rcpt_tos": rcpt_tos,
        "mailbox": rcpt_tos[0] if rcpt_tos else "",
        "size": len(content),
        "raw": content,
        "state": MessageState.RECEIVED,
        "purged_at": None,
    }


def envelope_problem(address: str) -> str | None:
    """Why an envelope address cannot be stored and delivered: "control" or "utf8" (invalid UTF-8), else None.

    aiosmtpd decodes MAIL and RCPT arguments as UTF-8 with surrogateescape, so invalid bytes arrive as lone
    surrogates; stored, they would fail the database write (451 on every try) or the delivery later.
    """
    if address.isprintable():
        return None
    categories = {unicodedata.category(ch) for ch in address}
    if "Cs" in categories:
        return "utf8"
    if "Cc" in categories:  # C0, DEL and C1
        return "control"
    return None


class GatewayHandler:
    """One instance serves all sessions; `protocol` is 'smtp' or 'lmtp' (LMTP answers once per recipient)."""

    def __init__(
        self,
        engine: Engine,
        rules: RuleSetHolder,
        enqueue: EnqueueBatch,
        *,
        protocol: str,
        max_message_size: int,
        max_recipients: int = 100,
        demo_dates: bool = False,
    ) -> None:
        self.demo_dates = demo_dates
        self.committer = GroupCommitter(engine, enqueue)
        self.engine = engine
        self.rules = rules
        self.protocol = protocol
        self.max_message_size = max_message_size
        self.max_recipients = max_recipients

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:
        # every SMTP session is its own asyncio task, so this binding is the session's and no other's; a new
        # MAIL starts a new transaction id for every line logged until the next one
        structlog.contextvars.bind_contextvars(smtp_transaction=uuid.uuid4().hex[:12], protocol=self.protocol)
        problem = envelope_problem(address)
        if problem is not None:
            return replies.REJECT_SENDER_UTF8 if problem == "utf8" else replies.REJECT_SENDER_CONTROL
        # what aiosmtpd does itself when a handler has no MAIL hook
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.OK_SENDER

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if not self.rules.loaded:
            # started without any good rule set (services/ruleset/reload.py): the sending MTA keeps the mail
            # queued and retries; never a 5xx, which would bounce it
            return replies.TEMPFAIL_RULES
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return replies.REJECT_TOO_MANY_RECIPIENTS
        problem = envelope_problem(address)
        if problem is not None:
            return replies.REJECT_RECIPIENT_UTF8 if problem == "utf8" else replies.REJECT_RECIPIENT_CONTROL
        # the whole address must match (a trailing newline or bracket is refused, not stripped)
        if not is_mailbox(address):
            return replies.REJECT_BAD_ADDRESS
        if not self.rules.current.is_served(address):
            await self._count_rejection()
            return replies.REJECT_UNKNOWN_RECIPIENT.format(rcpt=address)
        envelope.rcpt_tos.append(address)
        return replies.OK_RECIPIENT

    async def _count_rejection(self) -> None:
        try:
            # in the next group commit, with the mails waiting for it
            await self.committer.count(
                Count(
                    hour=utcnow(),
                    mailbox="(unserved)",
                    category="(none)",
                    channel="(none)",
                    outcome=rejected("unknown-recipient"),
                )
            )
        except Exception:
            log.warning("gateway.count_failed")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        spool: Spool | None = getattr(envelope, "spool", None)
        if spool is None:  # a session class without services.gateway.spool (aiosmtpd's own DATA)
            return await self._store(session, envelope, envelope.original_content or b"")
        try:
            async with spool.loaded() as content:
                return await self._store(session, envelope, content)
        except Exception as exc:  # reading the spool file back; the store's own failures are answered in _store
            log.error("gateway.spool_read_failed", protocol=self.protocol, error=type(exc).__name__)
            return self._answer(replies.TEMPFAIL_STORAGE, list(envelope.rcpt_tos))

    async def _store(self, session: Any, envelope: Any, content: bytes) -> str:
        recipients = list(envelope.rcpt_tos)
        if len(content) > self.max_message_size:
            return self._answer(replies.REJECT_TOO_BIG.format(limit=self.max_message_size), recipients)
        message_id = new_message_id()
        received_at = utcnow()
        if self.demo_dates and _is_loopback(session.peer):
            received_at = demo_received_at(content) or received_at
        # per-mail work stays small on purpose: this runs for every accepted mail (bench/README.md)
        started = time.perf_counter()
        try:
            row = new_message_row(
                message_id=message_id,
                received_at=received_at,
                protocol=self.protocol,
                mail_from=envelope_sender(envelope.mail_from),
                recipients=recipients,
                content=content,
            )
            await self.committer.store(row)
        except Exception as exc:
            log.error("gateway.store_failed", message_id=message_id, protocol=self.protocol, error=type(exc).__name__)
            return self._answer(replies.TEMPFAIL_STORAGE, recipients)
        finally:
            # failed stores are timed too, as before: a slow failing database shows in the histogram
            STORE_SECONDS.observe(time.perf_counter() - started)
        log.info(
            "gateway.stored",
            message_id=message_id,
            protocol=self.protocol,
            size=len(content),
            recipients=len(recipients),
        )
        return self._answer(replies.OK_QUEUED.format(id=message_id), recipients)

    async def drain(self) -> None:
        """Wait for enqueues still in flight (at shutdown; the sweep would catch them anyway)."""
        await self.committer.drain()

    def _answer(self, line: str, recipients: list[str]) -> str:
        if self.protocol == "lmtp" and len(recipients) > 1:
            return "\r\n".join([line] * len(recipients))
        return line

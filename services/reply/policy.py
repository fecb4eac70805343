"""RFC 3834 / RFC 5230 reply policy: who must never get an automatic reply, and why."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import structlog

from services.classify.engine import RuleSet
from services.config import Settings
from services.domain import is_replyable
from services.mail import AUTOMATED_LOCALPART, InboundMail
from services.reply.authentication import (
    SenderAuthentication,
    aligned,
    organisational_domain,
    read_authentication,
)

ReplyAuth = Literal["aligned", "not-failed", "off"]
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PolicyConfig:
    spam_score_header: str | None = None
    spam_score_threshold: float = 5.0
    # authserv-ids whose Authentication-Results we believe (our own MX's milters), lower case
    trusted_authserv_ids: tuple[str, ...] = ()
    reply_auth: ReplyAuth = "off"


def policy_config(settings: Settings, *, warn: bool = True) -> PolicyConfig:
    """The policy a process applies; `warn` at start-up: without trusted ids nothing tells forged senders apart."""
    ids = settings.trusted_authserv_id_list
    mode: ReplyAuth = settings.reply_auth or ("not-failed" if ids else "off")
    if warn and mode != "off" and not ids:
        log.warning("policy.reply_auth_without_trusted_ids", reply_auth=mode)
    if warn and mode == "off":
        log.warning(
            "policy.reply_auth_off",
            hint="set CHANNELSHIFT_TRUSTED_AUTHSERV_IDS: forged senders get replies (backscatter)",
        )
    return PolicyConfig(settings.spam_score_header, settings.spam_score_threshold, ids, mode)


def sender_authentication(mail: InboundMail, config: PolicyConfig) -> SenderAuthentication:
    if config.reply_auth == "off":
        return SenderAuthentication(from_domain="")  # nothing is read, nothing authenticates
    auth = read_authentication(mail, config.trusted_authserv_ids)
    if auth.ignored_headers:
        # counts only: the ids and results of foreign hops can name the sender's provider
        log.info("policy.authres_ignored", ignored=auth.ignored_headers, trusted=auth.trusted_headers)
    return auth


def domain_capped(auth: SenderAuthentication, config: PolicyConfig) -> bool:
    """Whether a reply counts against the per-domain daily cap: its sender's domain did not authenticate.

    Only where results are read: with `off` nothing could ever authenticate, and a cap on every domain would
    stop replies to the big mail providers most citizens write from after 20 a day.
    """
    return config.reply_auth != "off" and not auth.aligned_pass


def reply_identity(address: str) -> str:
    """The per-address key of the reply window and cap: case and plus-addressing folded (a+1@x = A@x)."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local.partition('+')[0] or local}@{domain}"


def reply_domain(address: str) -> str:
    """The key of the per-domain cap of unauthenticated replies: the organisational domain of the sender."""
    return organisational_domain(address.strip().lower().rpartition("@")[2])


def suppression_reason(
    mail: InboundMail,
    envelope_from: str,
    envelope_to: tuple[str, ...],
    ruleset: RuleSet,
    config: PolicyConfig,
    auth: SenderAuthentication | None = None,
) -> str | None:
    """The reason not to reply, or None when a reply is allowed (dedup and caps are checked later)."""
    sender = envelope_from.strip().lower()
    if not sender:
        return "null-sender"
    if not is_replyable(sender):
        return "invalid-sender"
    if mail.automated_signals:
        return mail.automated_signals[0]
    if mail.parse_limited:
        # a header we did not read could have said Auto-Submitted; staff still get the mail, flagged
        return "parse-limit"
    localpart = sender.partition("@")[0]
    if AUTOMATED_LOCALPART.match(localpart):
        return "automated-sender"
    if ruleset.is_own(sender) or (mail.from_address and ruleset.is_own(mail.from_address)):
        return "own-address"
    if not any(ruleset.is_served(rcpt) for rcpt in envelope_to):
        return "not-served"
    # RFC 5230 4.5 (Sieve vacation): only answer mail that names one of our addresses in To/Cc/Bcc/Resent-*.
    # Mail that reached us by Bcc, an alias or a list stays unanswered.
    if not any(ruleset.is_own(address) for address in mail.addressed_to):
        return "not-addressed"
    if config.spam_score_header:
        raw_score = mail.header(config.spam_score_header)
        if raw_score:
            match = re.search(r"-?\d+(?:\.\d+)?", raw_score)
            if match and float(match.group(0)) >= config.spam_score_threshold:
                return "spam-score"
    return _authentication_reason(mail, sender, config, auth)


def _authentication_reason(
    mail: InboundMail, sender: str, config: PolicyConfig, auth: SenderAuthentication | None
) -> str | None:
    """Backscatter: a reply goes to the envelope sender, which anyone can forge; believe only trusted hops."""
    if config.reply_auth == "off":
        return None
    auth = auth or sender_authentication(mail, config)
    if config.reply_auth == "aligned":
        if not auth.aligned_pass:
            return "unauthenticated"
        # a replayed DKIM-signed mail passes for its From domain whatever envelope sender it is sent with
        if not aligned(sender.rpartition("@")[2], auth.from_domain):
            return "unaligned-envelope"
        return None
    return "auth-failed" if auth.failed else None

"""RFC 3834 / RFC 5230 reply policy: who must never get an automatic reply, and why."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.classify.engine import RuleSet
from services.mail import AUTOMATED_LOCALPART, InboundMail

_ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\"\\]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z0-9-]{2,63}$")


@dataclass(frozen=True)
class PolicyConfig:
    spam_score_header: str | None = None
    spam_score_threshold: float = 5.0


def suppression_reason(
    mail: InboundMail, envelope_from: str, envelope_to: tuple[str, ...], ruleset: RuleSet, config: PolicyConfig
) -> str | None:
    """The reason not to reply, or None when a reply is allowed (dedup and caps are checked later)."""
    sender = envelope_from.strip().lower()
    if not sender:
        return "null-sender"
    if not _ADDRESS.match(sender):
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
    return None

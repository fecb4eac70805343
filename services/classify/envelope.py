"""The envelope to assume for a mail read from a file: the From header as sender, its served To/Cc as recipients."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from services.domain import Envelope
from services.mail import InboundMail

if TYPE_CHECKING:
    from services.classify.engine import RuleSet


def assumed_envelope(
    ruleset: RuleSet,
    mail: InboundMail,
    mail_from: str | None = None,
    rcpt_to: list[str] | None = None,
    received_at: datetime | None = None,
) -> Envelope:
    """What `rules explain`, `rules eval` and `preview` take as envelope unless told: what the headers say."""
    sender = mail_from if mail_from is not None else mail.from_address
    recipients = (
        tuple(rcpt_to)
        if rcpt_to
        else tuple(a for a in (*mail.to_addresses, *mail.cc_addresses) if ruleset.is_served(a))
    )
    if not recipients and ruleset.settings.served.domains:
        recipients = (f"info@{ruleset.settings.served.domains[0].lstrip('*.')}",)
    return Envelope(sender, recipients, received_at or datetime.now(UTC))

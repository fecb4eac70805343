"""The text the intent model reads of a mail: subject, the sender's own words, attachment names, quoted text."""

from __future__ import annotations

from services.classify.text import fold
from services.mail import InboundMail

# Enough for every intent we saw (the longest labelled own text is under 3,000 characters); bounds the cost.
OWN_CHARS = 3000
QUOTED_CHARS = 1500
SEPARATOR = "\x00"  # between the own words and the quoted text; never in folded mail text


def own_part(text: str) -> str:
    return text.partition(SEPARATOR)[0]


def quoted_part(text: str) -> str:
    # a constant first word keeps the quoted-text vocabulary from being empty when no example quotes anything
    return "quoted " + text.partition(SEPARATOR)[2]


def model_text(mail: InboundMail) -> str:
    """Folded subject + own words + attachment names, SEPARATOR, then the quoted or forwarded text.

    A forwarded landlord letter under one line of the citizen's can decide the intent, so it is not dropped;
    a quoted Jobcenter letter is usually about something else, so the model reads it with features of its own.
    """
    own = mail.own_text[:OWN_CHARS]
    parts = [mail.subject, own]
    names = [attachment.filename for attachment in mail.attachments[:20]]
    if names:
        parts.append("anhang: " + " ".join(names))
    quoted = _quoted_text(mail.body_text, own, mail.forwarded_text)[:QUOTED_CHARS]
    return fold("\n".join(parts)).replace(SEPARATOR, " ") + SEPARATOR + fold(quoted).replace(SEPARATOR, " ")


def _quoted_text(body: str, own: str, forwarded: str) -> str:
    """What follows the sender's own words in the body (their last line is found again in it), and the closed
    forwarded blocks above them."""
    if own:
        tail = own[-40:]
        position = body.find(tail)
        rest = body[position + len(tail) :] if position >= 0 else ""
        rest = forwarded + "\n" + rest
    else:
        rest = body
    lines = [line.lstrip("> ").strip() for line in rest.splitlines()]
    return " ".join(line for line in lines if line)

"""The decision's vocabulary every layer shares: Verdict, envelope, priorities, paths, outcomes, channels, languages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args


class Priority(StrEnum):
    """How urgently staff should look at the original, lowest first (rules may set any; safety sets a floor)."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


PRIORITY_ORDER: tuple[Priority, ...] = tuple(Priority)


class DecisionPath(StrEnum):
    """Which layer decided a mail's category."""

    RULE = "rule"
    MODEL = "model"
    SAFETY = "safety"
    UNCERTAIN = "uncertain"
    # classification did not finish within its time limit: delivered to staff flagged, never answered
    LIMIT = "limit"


class Outcome(StrEnum):
    """What the hourly counters count about a mail (the `outcome` column); the stored values are these strings."""

    RECEIVED = "received"
    REPLIED = "replied"  # a reply is due (planned); REPLY_SENT once the relay took it
    NO_REPLY = "no-reply"
    HELD = "held"
    REPLY_SENT = "reply-sent"
    REPLY_FAILED = "reply-failed"
    REPLY_UNCERTAIN = "reply-uncertain"
    DELIVERED = "delivered"
    DELIVERED_WRAPPED = "delivered-wrapped"
    DELIVERY_FAILED = "delivery-failed"
    REPEAT_7D = "repeat-7d"
    REPEAT_30D = "repeat-30d"
    CLICK = "click"
    CLICK_UNIQUE = "click-unique"
    # click cohorts: booked to the hour the replied mail arrived (services/store/cohort.py)
    REPLY_CLICKED = "reply-clicked"
    LINK_OPENED = "link-opened"


# outcomes that carry a reason after the prefix: `suppressed:daily-cap`, `rejected:unknown-recipient`
SUPPRESSED_PREFIX = "suppressed:"
REJECTED_PREFIX = "rejected:"
REPEAT_PREFIX = "repeat-"


def suppressed(reason: str) -> str:
    """The outcome of a reply stopped for `reason`."""
    return SUPPRESSED_PREFIX + reason


def rejected(reason: str) -> str:
    """The outcome of a recipient refused in the SMTP dialogue for `reason`."""
    return REJECTED_PREFIX + reason


class Channel(StrEnum):
    """The channels the shipped rule set steers to. A deployment's settings may name others, so a decision's
    channel stays a `str`; the code itself names only NONE and OVERVIEW."""

    UPLOAD = "upload"
    PORTAL = "portal"
    APPOINTMENT = "appointment"
    PHONE = "phone"
    LEGAL = "legal"
    FEEDBACK = "feedback"
    OVERVIEW = "overview"  # where a link whose channel is unknown lands
    NONE = "none"  # no channel (automated mail): needs no entry in settings.channels


# ISO 639-1 codes. Replies are written in these (beside German); a rule set may restrict them.
ReplyLanguage = Literal["de", "en", "uk", "ar", "ru", "tr"]
# the detector also tells these apart, so that the model, rules and statistics see them (replies: German + English)
DetectedLanguage = Literal[ReplyLanguage, "ro", "fa", "pl"]
# the dashboard's, workbench's and feedback pages' languages
PageLanguage = Literal["de", "en"]
REPLY_LANGUAGES: tuple[ReplyLanguage, ...] = get_args(ReplyLanguage)
DETECTED_LANGUAGES: tuple[DetectedLanguage, ...] = get_args(DetectedLanguage)
PAGE_LANGUAGES: tuple[PageLanguage, ...] = get_args(PageLanguage)
DEFAULT_LANGUAGE: ReplyLanguage = "de"  # German is always in a reply, and the guess when unsure


# Non-negotiable 5: these always reach a human with a priority flag, whatever a rule file says. Order matters:
# an emergency outranks an objection when both are likely.
SAFETY_PRIORITY: dict[str, Priority] = {"emergency": Priority.URGENT, "objection": Priority.HIGH}
SAFETY_CATEGORIES: tuple[str, ...] = tuple(SAFETY_PRIORITY)
# the tag of automated mail whose words a safety rule matched (a newsletter): "safety-words:emergency"
SAFETY_WORDS_TAG = "safety-words"


def safety_outranks(model_category: str | None, rule_category: str) -> bool:
    """Whether the model's safety alarm overrides a rule's category: any non-safety rule, and an objection rule
    when the alarm is an emergency (the labelling guide: an acute need wins over everything, the contested
    decision included; the mail is urgent, not merely high)."""
    if model_category not in SAFETY_CATEGORIES:
        return False
    if rule_category not in SAFETY_CATEGORIES:
        return True
    return SAFETY_CATEGORIES.index(model_category) < SAFETY_CATEGORIES.index(rule_category)


# one address syntax for the whole service: a local part without spaces, brackets or quotes, an ASCII domain
_LOCAL_PART = r"[^\s@<>()\[\],;:\"\\]{1,64}"
_MAILBOX = re.compile(_LOCAL_PART + r"@[A-Za-z0-9.-]{1,253}")
# a reply goes out to the internet: its domain needs a top-level label (no `user@localhost`)
_REPLYABLE = re.compile(_LOCAL_PART + r"@[A-Za-z0-9.-]{1,253}\.[A-Za-z0-9-]{2,63}")


def is_mailbox(address: str) -> bool:
    """An address we accept in RCPT TO and write into a header: local@domain, nothing around it."""
    return _MAILBOX.fullmatch(address) is not None


def is_replyable(address: str) -> bool:
    """An address an automatic reply may be sent to (a mailbox whose domain has a top-level label)."""
    return _REPLYABLE.fullmatch(address) is not None


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP transaction said, apart from the message: sender, recipients, arrival time."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    received_at: datetime


# the Verdict's fields that the `decision` table stores, in its column names
STORED_FIELDS: tuple[str, ...] = (
    "category",
    "channel",
    "rule_id",
    "ruleset_version",
    "template",
    "priority",
    "deliver_to",
    "language",
    "reply",
    "suppressed",
    "sender_pseudonym",
    "tags",
    "defects",
    "path",
    "confidence",
    "scores",
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Everything decided about one mail from its bytes, envelope and the rule set: the one decision shape.

    `decide()` computes it without a database or network; the worker stores it (after the reply window and
    the daily caps, which need the store, may turn `reply` off), and `rules explain`, `rules eval`, `replay`,
    `preview` and the workbench show it.
    """

    category: str
    channel: str
    rule_id: str
    ruleset_version: str
    template: str | None  # the rule's reply template, even when the reply is suppressed
    reply: bool  # a reply is due: a template and no suppression reason
    suppressed: str | None
    priority: str
    deliver_to: str  # the target that gets the original (held mail: the postmaster target)
    held: bool  # the rule said `deliver: false`: flagged, delivered to the postmaster target
    language: str  # the detected language of the mail
    reply_language: str | None = None  # the language the reply is written in beside German (None: no reply)
    tags: tuple[str, ...] = ()
    defects: tuple[str, ...] = ()
    path: str = DecisionPath.RULE
    confidence: str = "high"
    scores: tuple[tuple[str, float], ...] = ()  # the model's top three, best first
    escalated: bool = False  # the embedding model was asked
    sender_pseudonym: str | None = None  # the reply window's and caps' key (never the address)
    domain_pseudonym: str | None = None  # an unauthenticated sender's domain: its replies share a daily cap
    # threading headers of the reply; not stored (the citizen's Message-IDs stay sealed in the raw message)
    in_reply_to: str | None = field(default=None, repr=False)
    references: str | None = field(default=None, repr=False)

    def with_allowance(self, reason: str | None) -> Verdict:
        """The verdict after the store's reply window and caps: `reason` (or None) stops the reply."""
        if reason is None or not self.reply:
            return self
        return replace(self, reply=False, suppressed=reason, reply_language=None)

    def columns(self) -> dict[str, Any]:
        """The `decision` row's values (without message id, time and key id, which the store adds)."""
        values = {name: getattr(self, name) for name in STORED_FIELDS}
        values["tags"], values["defects"] = list(self.tags), list(self.defects)
        values["scores"] = dict(self.scores) if self.scores else None
        return values

    @classmethod
    def of_row(cls, values: Mapping[Any, Any]) -> Verdict:
        """From a stored `decision` row's values (what the table does not keep gets its default)."""
        scores = values.get("scores") or {}
        return cls(
            category=values["category"],
            channel=values["channel"],
            rule_id=values["rule_id"],
            ruleset_version=values["ruleset_version"],
            template=values["template"],
            reply=bool(values["reply"]),
            suppressed=values["suppressed"],
            priority=values["priority"],
            deliver_to=values["deliver_to"] or "staff",
            held=False,
            language=values["language"],
            tags=tuple(values.get("tags") or ()),
            defects=tuple(values.get("defects") or ()),
            path=values.get("path") or DecisionPath.RULE,
            confidence=values.get("confidence") or "high",
            scores=tuple(sorted(scores.items(), key=lambda item: -item[1])),
            sender_pseudonym=values.get("sender_pseudonym"),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for `rules explain --json`, preview and the workbench (pseudonyms left out)."""
        data = asdict(self)
        for private in ("sender_pseudonym", "domain_pseudonym", "in_reply_to", "references"):
            data.pop(private)
        data["tags"], data["defects"] = list(self.tags), list(self.defects)
        data["scores"] = [{"category": c, "score": s} for c, s in self.scores]
        data["path"] = str(self.path)
        return data

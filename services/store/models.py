"""SQLModel tables: messages, decisions, replies, deliveries, reply ledger, counters, staff corrections and the
rule-set history."""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum, nonmember

from sqlalchemy import JSON, Column, Index, LargeBinary, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class MessageState(StrEnum):
    """Life cycle of a stored message. DELIVERED and HELD are final.

    FAILED (the staff relay refused the original and its wrapper) needs a person; it is not purged, because
    the raw message is the only copy nobody has read.
    """

    RECEIVED = "received"
    CLASSIFIED = "classified"
    DELIVERED = "delivered"
    HELD = "held"
    FAILED = "failed"
    FINAL = nonmember((DELIVERED, HELD))


class JobState(StrEnum):
    """State of a reply or a delivery to staff.

    pending -> sending (claimed by one worker) -> transmitting (talking to the relay) -> sent | failed,
    or back to pending on a transient error. A worker that dies while *sending* is simply retried. One that
    dies while *transmitting* may or may not have handed the mail over: a delivery to staff is retried
    (at least once - an original must never be lost), a reply becomes *uncertain* and is never sent again
    (at most once - a citizen must never get two).
    """

    PENDING = "pending"
    SENDING = "sending"
    TRANSMITTING = "transmitting"
    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


class Message(SQLModel, table=True):
    __tablename__ = "message"
    __table_args__ = (
        Index("ix_message_state_received", "state", "received_at"),
        # what purge looks for: a purged row leaves this index, so a purge run never reads the history again
        Index(
            "ix_message_unpurged",
            "state",
            "received_at",
            sqlite_where=text("purged_at IS NULL"),
            postgresql_where=text("purged_at IS NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)
    received_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    protocol: str = Field(max_length=8)
    mail_from: str = Field(max_length=1024, description="envelope sender, sealed at rest (services/store/vault.py)")
    rcpt_tos: list[str] = Field(sa_column=Column(JSON, nullable=False))
    mailbox: str = Field(max_length=320, description="first served recipient")
    size: int
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True), description="sealed")
    state: str = Field(default=MessageState.RECEIVED, max_length=16)
    purged_at: datetime | None = None


class MessageKey(SQLModel, table=True):
    """The data key that opens one message's sealed fields; purge deletes it first (crypto-shredding)."""

    __tablename__ = "message_key"

    message_id: str = Field(primary_key=True, max_length=32)
    data_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Decision(SQLModel, table=True):
    __tablename__ = "decision"

    message_id: str = Field(primary_key=True, foreign_key="message.id", max_length=32)
    decided_at: datetime = Field(default_factory=utcnow, index=True)
    category: str = Field(max_length=64, index=True)
    channel: str = Field(max_length=64)
    rule_id: str = Field(max_length=128)
    ruleset_version: str = Field(max_length=64)
    template: str | None = Field(default=None, max_length=64)
    priority: str = Field(default="normal", max_length=16)
    deliver_to: str | None = Field(default=None, max_length=64)
    language: str = Field(max_length=8)
    reply: bool
    suppressed: str | None = Field(default=None, max_length=64)
    sender_pseudonym: str | None = Field(default=None, max_length=64, index=True)
    pseudonym_key_id: str | None = Field(default=None, max_length=16)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    defects: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    path: str = Field(default="rule", max_length=16, description="rule | model | safety | uncertain")
    confidence: str = Field(default="high", max_length=8)
    scores: dict[str, float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Reply(SQLModel, table=True):
    __tablename__ = "reply"
    __table_args__ = (Index("ix_reply_state", "state"),)

    message_id: str = Field(primary_key=True, foreign_key="message.id", max_length=32)
    state: str = Field(default=JobState.PENDING, max_length=16)
    attempts: int = 0
    reply_message_id: str = Field(max_length=255)
    # Not written since 0004 (the threading headers are taken from the sealed original at send time); purge
    # clears what older versions stored.
    in_reply_to: str | None = Field(default=None, max_length=255)
    references: str | None = Field(default=None, max_length=2000)
    created_at: datetime = Field(default_factory=utcnow)
    claimed_at: datetime | None = None
    sent_at: datetime | None = None
    error: str | None = Field(default=None, max_length=500)


class Delivery(SQLModel, table=True):
    __tablename__ = "delivery"
    __table_args__ = (Index("ix_delivery_state", "state"),)

    message_id: str = Field(primary_key=True, foreign_key="message.id", max_length=32)
    state: str = Field(default=JobState.PENDING, max_length=16)
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    claimed_at: datetime | None = None
    delivered_at: datetime | None = None
    error: str | None = Field(default=None, max_length=500)


class ReplyLedger(SQLModel, table=True):
    """One row per steering reply granted, keyed by sender pseudonym.

    Drives the per-template window and the daily cap, and the repeat-sender measure: the first later
    e-mail from the same pseudonym within 7 / 30 days marks the row once and bumps a counter in the
    hour of the original mail, with the original category and channel.
    """

    __tablename__ = "reply_ledger"
    __table_args__ = (
        Index("ix_reply_ledger_sender_time", "sender_pseudonym", "granted_at"),
        Index("ix_reply_ledger_domain_time", "domain_pseudonym", "granted_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sender_pseudonym: str = Field(max_length=64)
    key_id: str = Field(default="k1", max_length=16)
    template: str = Field(max_length=64)
    granted_at: datetime = Field(default_factory=utcnow)
    message_id: str = Field(max_length=32)
    received_at: datetime
    mailbox: str = Field(max_length=320)
    category: str = Field(max_length=64)
    channel: str = Field(max_length=64)
    repeat_7d: bool = False
    repeat_30d: bool = False
    # set on replies the sender's domain did not authenticate: the per-domain daily cap counts these
    domain_pseudonym: str | None = Field(default=None, max_length=64)


class LinkClick(SQLModel, table=True):
    """First click per reply link (token); later clicks only bump the counter. No IP, no user agent."""

    __tablename__ = "link_click"

    token: str = Field(primary_key=True, max_length=64)
    message_id: str = Field(max_length=32, index=True)
    channel: str = Field(max_length=64)
    first_clicked_at: datetime = Field(default_factory=utcnow)
    clicks: int = 1


class Counter(SQLModel, table=True):
    """Hourly rollup per mailbox x category x channel x outcome; dashboards read this, not messages."""

    __tablename__ = "counter"

    hour: datetime = Field(primary_key=True)
    mailbox: str = Field(primary_key=True, max_length=320)
    category: str = Field(primary_key=True, max_length=64)
    channel: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(primary_key=True, max_length=80)
    count: int = 0


class CounterDay(SQLModel, table=True):
    """Daily rollup of `counter` per local calendar day in `zone`, for long periods (services/store/rollup.py)."""

    __tablename__ = "counter_day"

    zone: str = Field(primary_key=True, max_length=64)
    day: date = Field(primary_key=True)
    mailbox: str = Field(primary_key=True, max_length=320)
    category: str = Field(primary_key=True, max_length=64)
    channel: str = Field(primary_key=True, max_length=64)
    outcome: str = Field(primary_key=True, max_length=80)
    count: int = 0


class CounterDirtyHour(SQLModel, table=True):
    """An hour of `counter` changed since the daily rollup last read it; `version` grows with every change."""

    __tablename__ = "counter_dirty_hour"

    hour: datetime = Field(primary_key=True)
    version: int = 1


class RollupState(SQLModel, table=True):
    """The zone whose daily rollup is complete (apart from dirty hours), and when it was last brought up to date."""

    __tablename__ = "rollup_state"

    id: int = Field(default=1, primary_key=True)
    zone: str = Field(max_length=64)
    built_at: datetime = Field(default_factory=utcnow)


class StaffCorrection(SQLModel, table=True):
    """A category a member of staff gave a delivered original through its feedback link; no mail content.

    Append-only (a second submission for a message adds a row), so `channelshift_corrections_total` only grows;
    the newest row per message is the correction that counts for precision and the export.
    """

    __tablename__ = "staff_correction"
    __table_args__ = (Index("ix_staff_correction_message_time", "message_id", "corrected_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="decision.message_id", max_length=32)
    decided_category: str = Field(max_length=64, description="the decision's category when the link was made")
    corrected_category: str = Field(max_length=64)
    rule_id: str = Field(max_length=128)
    ruleset_version: str = Field(max_length=64)
    corrected_at: datetime = Field(default_factory=utcnow, index=True)


class RuleSetVersion(SQLModel, table=True):
    """A rule set that became active in some process, recorded once per version hash (services/store/rulesets.py)."""

    __tablename__ = "ruleset_version"

    version: str = Field(primary_key=True, max_length=64)
    activated_at: datetime = Field(default_factory=utcnow, index=True, description="first activation anywhere")
    activated_by: str = Field(max_length=32, description="the role that activated it first: serve, gateway, ...")
    previous_version: str | None = Field(default=None, max_length=64, description="the set active before it")
    # True once a process that trains the intent model has loaded it: only such a set is a last good set
    # for a worker (a gateway validates the examples but does not train)
    model_checked: bool = False
    file_count: int = 0
    changed: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    warnings: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class RuleSetFile(SQLModel, table=True):
    """One file of a recorded rule set: `rules/...`, `templates/...` or `examples/...`, its content by hash."""

    __tablename__ = "ruleset_file"

    version: str = Field(primary_key=True, foreign_key="ruleset_version.version", max_length=64)
    path: str = Field(primary_key=True, max_length=512)
    sha256: str = Field(foreign_key="ruleset_blob.sha256", max_length=64, index=True)
    size: int


class RuleSetBlob(SQLModel, table=True):
    """File contents by SHA-256: an unchanged file costs nothing in the next version."""

    __tablename__ = "ruleset_blob"

    sha256: str = Field(primary_key=True, max_length=64)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))

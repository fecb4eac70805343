"""Retention: shred finished messages (key, body, sender, threading headers, error texts); decisions stay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Engine, delete, func, select, text, update
from sqlmodel import Session, col

from services.store.db import session_scope
from services.store.models import Delivery, LinkClick, Message, MessageKey, MessageState, Reply, ReplyLedger, utcnow

BATCH = 1000
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PurgeResult:
    messages: int
    ledger_rows: int
    clicks: int


def purge(engine: Engine, retention_days: int, now: datetime | None = None, dry_run: bool = False) -> PurgeResult:
    """Only messages in a final state (delivered or held) are purged: nothing still in flight loses its body.

    The data key goes first and in the same transaction as the body: from that commit on, any copy of the
    sealed fields (a dead tuple, a WAL segment, a backup) is unreadable.
    """
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    # the reply ledger only matters for 30 days (dedup window, repeat senders); keep it for the longer of both
    ledger_cutoff = (now or utcnow()) - timedelta(days=max(retention_days, 31))
    old_final = (
        col(Message.received_at) < cutoff,
        col(Message.state).in_(MessageState.FINAL),
        col(Message.purged_at).is_(None),
    )
    if dry_run:
        with Session(engine) as session:
            count = session.execute(select(func.count()).select_from(Message).where(*old_final)).scalar_one()
        return PurgeResult(int(count), 0, 0)
    purged = 0
    # Read through ix_message_unpurged, whose rows leave it as they are shredded: each batch reads only rows
    # still to purge, however many were purged before (through the full index, every batch re-read them all).
    # The index's own order keeps PostgreSQL on it: by its estimate a sequential scan finds a batch of old
    # unpurged rows at once, while in the table they lie behind all purged ones.
    in_index_order = (col(Message.state), col(Message.received_at))
    while True:
        with session_scope(engine) as uow:
            ids = list(
                uow.session.execute(
                    select(col(Message.id)).where(*old_final).order_by(*in_index_order).limit(BATCH)
                ).scalars()
            )
            if not ids:
                break
            _shred(uow.session, ids)
            purged += len(ids)
    with session_scope(engine) as uow:
        ledger = uow.session.execute(
            ReplyLedger.__table__.delete().where(  # type: ignore[attr-defined]
                col(ReplyLedger.granted_at) < ledger_cutoff
            )
        )
        clicks = uow.session.execute(
            LinkClick.__table__.delete().where(  # type: ignore[attr-defined]
                col(LinkClick.first_clicked_at) < cutoff
            )
        )
    if purged:
        _drop_old_copies(engine)
    return PurgeResult(purged, int(getattr(ledger, "rowcount", 0)), int(getattr(clicks, "rowcount", 0)))


def _shred(session: Session, ids: list[str]) -> None:
    session.execute(delete(MessageKey).where(col(MessageKey.message_id).in_(ids)))
    now = utcnow()
    session.execute(update(Message).where(col(Message.id).in_(ids)).values(raw=None, mail_from="", purged_at=now))
    # Message-IDs of the citizen's mail (written by versions before 0004) and relay texts about the send
    session.execute(
        update(Reply).where(col(Reply.message_id).in_(ids)).values(in_reply_to=None, references=None, error=None)
    )
    session.execute(update(Delivery).where(col(Delivery.message_id).in_(ids)).values(error=None))


def _drop_old_copies(engine: Engine) -> None:
    """Remove the bytes of deleted keys that the database itself still keeps.

    PostgreSQL: plain VACUUM marks deleted keys' space free but leaves their bytes in the page until it is
    reused; VACUUM FULL writes message_key into new files and unlinks the old ones. The table is small (a key
    is 32 bytes), so the rewrite takes well under a second per 100,000 keys; the lock wait is bounded, and a
    rewrite that cannot get it is done by the next purge run. SQLite (secure_delete zeroes freed pages in
    the file): the WAL still holds older page images until a truncating checkpoint.
    """
    statements = (
        ["SET lock_timeout = '5s'", "VACUUM (FULL) message_key"]
        if engine.dialect.name == "postgresql"
        else ["PRAGMA wal_checkpoint(TRUNCATE)"]
    )
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for statement in statements:
                connection.execute(text(statement))
    except Exception as exc:
        log.warning("purge.old_copies_kept", error=type(exc).__name__)

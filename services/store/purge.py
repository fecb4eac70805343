"""Retention: drop raw bodies and envelope addresses of finished messages; decisions and counters stay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select, update
from sqlmodel import Session, col

from services.store.db import session_scope
from services.store.models import LinkClick, Message, MessageState, ReplyLedger, utcnow

BATCH = 1000


@dataclass(frozen=True)
class PurgeResult:
    messages: int
    ledger_rows: int
    clicks: int


def purge(engine: Engine, retention_days: int, now: datetime | None = None, dry_run: bool = False) -> PurgeResult:
    """Only messages in a final state (delivered or held) are purged: nothing still in flight loses its body."""
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
    while True:
        with session_scope(engine) as session:
            ids = list(session.execute(select(col(Message.id)).where(*old_final).limit(BATCH)).scalars())
            if not ids:
                break
            session.execute(
                update(Message).where(col(Message.id).in_(ids)).values(raw=None, mail_from="", purged_at=utcnow())
            )
            purged += len(ids)
    with session_scope(engine) as session:
        ledger = session.execute(
            ReplyLedger.__table__.delete().where(  # type: ignore[attr-defined]
                col(ReplyLedger.granted_at) < ledger_cutoff
            )
        )
        clicks = session.execute(
            LinkClick.__table__.delete().where(  # type: ignore[attr-defined]
                col(LinkClick.first_clicked_at) < cutoff
            )
        )
    return PurgeResult(purged, int(getattr(ledger, "rowcount", 0)), int(getattr(clicks, "rowcount", 0)))

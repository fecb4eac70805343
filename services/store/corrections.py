"""Staff corrections of misrouted mail: record one, count them, estimate precision per category, export them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Select, and_, func, select
from sqlmodel import Session, col

from services.store.db import session_scope
from services.store.models import Decision, StaffCorrection, utcnow


@dataclass(frozen=True)
class Correction:
    """The newest correction of one message, with its decision's time (no mail content exists here)."""

    message_id: str
    decided_category: str
    corrected_category: str
    rule_id: str
    ruleset_version: str
    decided_at: datetime
    corrected_at: datetime


@dataclass(frozen=True)
class CategoryPrecision:
    decided: int  # mails decided as this category in the period
    corrected_away: int  # ... whose newest staff correction names another category
    confirmed: int  # ... whose newest staff answer keeps this category
    corrected_in: int  # mails of other categories that staff moved into this one

    @property
    def precision(self) -> float | None:
        """(decided - corrected_away) / decided: an upper bound, as uncorrected mail counts as right."""
        return (self.decided - self.corrected_away) / self.decided if self.decided else None


def record_correction(engine: Engine, message_id: str, decided_category: str, corrected_category: str) -> bool:
    """Append a staff answer to the message's decision; False when there is no such decision."""
    with session_scope(engine) as uow:
        decision = uow.session.get(Decision, message_id)
        if decision is None:
            return False
        uow.session.add(
            StaffCorrection(
                message_id=message_id,
                decided_category=decided_category,
                corrected_category=corrected_category,
                rule_id=decision.rule_id,
                ruleset_version=decision.ruleset_version,
                corrected_at=utcnow(),
            )
        )
    return True


def _newest_ids() -> Select[int | None]:
    # ids grow with time, so the largest id per message is its newest answer
    return select(func.max(col(StaffCorrection.id))).group_by(col(StaffCorrection.message_id))


def newest_corrections(engine: Engine, since: datetime | None = None) -> list[Correction]:
    """The newest staff answer per message that moves it to another category, oldest decision first."""
    query = (
        select(StaffCorrection, col(Decision.decided_at))
        .join(Decision, col(Decision.message_id) == col(StaffCorrection.message_id))
        .where(
            col(StaffCorrection.id).in_(_newest_ids()),
            col(StaffCorrection.corrected_category) != col(StaffCorrection.decided_category),
        )
        .order_by(col(Decision.decided_at), col(StaffCorrection.message_id))
    )
    if since is not None:
        query = query.where(col(Decision.decided_at) >= since)
    with Session(engine) as session:
        rows = session.execute(query).all()
    return [
        Correction(
            row.message_id,
            row.decided_category,
            row.corrected_category,
            row.rule_id,
            row.ruleset_version,
            decided_at,
            row.corrected_at,
        )
        for row, decided_at in rows
    ]


def correction_pairs(engine: Engine) -> dict[tuple[str, str], int]:
    """Every submission that named another category, by (decided, corrected): what /metrics counts."""
    query = (
        select(col(StaffCorrection.decided_category), col(StaffCorrection.corrected_category), func.count())
        .where(col(StaffCorrection.corrected_category) != col(StaffCorrection.decided_category))
        .group_by(col(StaffCorrection.decided_category), col(StaffCorrection.corrected_category))
    )
    with Session(engine) as session:
        return {(str(a), str(b)): int(n) for a, b, n in session.execute(query).all()}


def precision_by_category(engine: Engine, since: datetime) -> dict[str, CategoryPrecision]:
    """Per category of the mails decided since `since`: decided, corrected away and in, confirmed."""
    recent = col(Decision.decided_at) >= since
    with Session(engine) as session:
        decided = dict(
            session.execute(
                select(col(Decision.category), func.count()).where(recent).group_by(col(Decision.category))
            ).all()
        )
        answers = session.execute(
            select(col(StaffCorrection.decided_category), col(StaffCorrection.corrected_category), func.count())
            .join(Decision, and_(col(Decision.message_id) == col(StaffCorrection.message_id), recent))
            .where(col(StaffCorrection.id).in_(_newest_ids()))
            .group_by(col(StaffCorrection.decided_category), col(StaffCorrection.corrected_category))
        ).all()
    away: dict[str, int] = {}
    confirmed: dict[str, int] = {}
    into: dict[str, int] = {}
    for old, new, count in answers:
        if old == new:
            confirmed[old] = confirmed.get(old, 0) + int(count)
        else:
            away[old] = away.get(old, 0) + int(count)
            into[new] = into.get(new, 0) + int(count)
    names = sorted({*decided, *away, *into})
    return {
        name: CategoryPrecision(int(decided.get(name, 0)), away.get(name, 0), confirmed.get(name, 0), into.get(name, 0))
        for name in names
    }


def newest_answer(engine: Engine, message_id: str) -> str | None:
    """The category the newest staff answer for this message named, or None when there is none."""
    query = (
        select(col(StaffCorrection.corrected_category))
        .where(col(StaffCorrection.message_id) == message_id)
        .order_by(col(StaffCorrection.id).desc())
        .limit(1)
    )
    with Session(engine) as session:
        found = session.execute(query).scalar_one_or_none()
    return None if found is None else str(found)

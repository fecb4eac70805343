"""How many mails each rule (or model path) decided in the last 7 and 30 days, read from the decisions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, func, select
from sqlmodel import Session, col

from services.store.models import Decision


@dataclass(frozen=True)
class RuleHits:
    """Decisions booked to one `rule_id` (a rule's id, or `model:<category>` and the like)."""

    rule_id: str
    last_7d: int
    last_30d: int
    this_version: int  # under the rule set version the caller asked about
    total: int
    last_hit: datetime | None


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive values from an aggregate; every stored time is UTC
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def rule_hits(engine: Engine, now: datetime, version: str) -> dict[str, RuleHits]:
    """Every rule id that ever decided a mail; a rule missing here never fired (decisions outlive purges)."""
    decided = col(Decision.decided_at)

    def within(days: int) -> ColumnElement[Any]:
        return func.sum(case((decided >= now - timedelta(days=days), 1), else_=0))

    query = select(
        col(Decision.rule_id),
        within(7),
        within(30),
        func.sum(case((col(Decision.ruleset_version) == version, 1), else_=0)),
        func.count(),
        func.max(decided),
    ).group_by(col(Decision.rule_id))
    with Session(engine) as session:
        rows = session.execute(query).all()
    return {
        str(rule): RuleHits(str(rule), int(week or 0), int(month or 0), int(current or 0), int(total), _aware(last))
        for rule, week, month, current, total, last in rows
    }

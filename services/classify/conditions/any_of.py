"""`any: [...]`: at least one child condition matches (evaluated in order, stopping at the first match)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.classify.conditions.base import Check, ConditionKind, Context, Requirement, Trace
from services.classify.facts import MailFacts

if TYPE_CHECKING:
    from services.classify.schema import Condition


def required_by_any(parts: list[Check]) -> Requirement | None:
    """Every child needs a keyword: then one of all their keywords is needed (none at all: never matches)."""
    if any(part.requires is None for part in parts):
        return None
    return frozenset().union(*(part.requires for part in parts if part.requires is not None))


def _compile(children: list[Condition], path: str, context: Context) -> Check:
    name = path + ".any"
    parts = [context.compile(child, f"{name}[{i}]") for i, child in enumerate(children)]
    tests = [part.test for part in parts]

    def test(facts: MailFacts) -> bool:
        return any(one(facts) for one in tests)

    def traced(facts: MailFacts, trace: Trace) -> bool:
        return trace.record(name, any(part.traced(facts, trace) for part in parts))

    return Check(test, traced, required_by_any(parts), any(part.may_time_out for part in parts))


def _children(children: list[Condition]) -> list[Condition]:
    return children


KIND: ConditionKind[list[Condition]] = ConditionKind(
    key="any", schema="list[Condition]", compile=_compile, children=_children
)

"""`all: [...]`: every child condition matches (evaluated in order, stopping at the first miss)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.classify.conditions.base import Check, ConditionKind, Context, Requirement, Trace
from services.classify.facts import MailFacts

if TYPE_CHECKING:
    from services.classify.schema import Condition


def required_by_all(parts: list[Check]) -> Requirement | None:
    """The smallest keyword requirement of a child that is reached before any child that could time out.

    Children after a missed one are not evaluated, so only those before it must be free of effects.
    """
    found: list[Requirement] = []
    for part in parts:
        if part.requires is not None:
            found.append(part.requires)
        if part.may_time_out:
            break
    return min(found, key=len) if found else None


def _compile(children: list[Condition], path: str, context: Context) -> Check:
    name = path + ".all"
    parts = [context.compile(child, f"{name}[{i}]") for i, child in enumerate(children)]
    tests = [part.test for part in parts]

    def test(facts: MailFacts) -> bool:
        return all(one(facts) for one in tests)

    def traced(facts: MailFacts, trace: Trace) -> bool:
        return trace.record(name, all(part.traced(facts, trace) for part in parts))

    return Check(test, traced, required_by_all(parts), any(part.may_time_out for part in parts))


def _children(children: list[Condition]) -> list[Condition]:
    return children


KIND: ConditionKind[list[Condition]] = ConditionKind(
    key="all", schema="list[Condition]", compile=_compile, children=_children
)

"""`not: {...}`: the child condition does not match."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.classify.conditions.base import Check, ConditionKind, Context, Trace
from services.classify.facts import MailFacts

if TYPE_CHECKING:
    from services.classify.schema import Condition


def _compile(child: Condition, path: str, context: Context) -> Check:
    name = path + ".not"
    inner = context.compile(child, name)
    inner_test = inner.test

    def test(facts: MailFacts) -> bool:
        return not inner_test(facts)

    def traced(facts: MailFacts, trace: Trace) -> bool:
        return trace.record(name, not inner.traced(facts, trace))

    return Check(test, traced, may_time_out=inner.may_time_out)


def _children(child: Condition) -> list[Condition]:
    return [child]


KIND: ConditionKind[Condition] = ConditionKind(key="not", schema="Condition", compile=_compile, children=_children)

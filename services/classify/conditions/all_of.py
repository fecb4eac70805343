"""`all: [...]`: every child condition matches (evaluated in order, stopping at the first miss)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.classify.conditions.base import Check, ConditionKind, Context, Requirement, combination

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
    return combination("all", children, path, context, all, required_by_all)


def _children(children: list[Condition]) -> list[Condition]:
    return children


KIND: ConditionKind[list[Condition]] = ConditionKind(
    key="all", schema="list[Condition]", compile=_compile, children=_children
)

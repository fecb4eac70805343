"""`any: [...]`: at least one child condition matches (evaluated in order, stopping at the first match)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.classify.conditions.base import Check, ConditionKind, Context, Requirement, combination

if TYPE_CHECKING:
    from services.classify.schema import Condition


def required_by_any(parts: list[Check]) -> Requirement | None:
    """Every child needs a keyword: then one of all their keywords is needed (none at all: never matches)."""
    if any(part.requires is None for part in parts):
        return None
    return frozenset().union(*(part.requires for part in parts if part.requires is not None))


def _compile(children: list[Condition], path: str, context: Context) -> Check:
    return combination("any", children, path, context, any, required_by_any)


def _children(children: list[Condition]) -> list[Condition]:
    return children


KIND: ConditionKind[list[Condition]] = ConditionKind(
    key="any", schema="list[Condition]", compile=_compile, children=_children
)

"""The rule conditions, one module per kind: adding a condition is a new module and its entry in KINDS."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from services.classify.conditions import (
    all_of,
    always,
    any_of,
    attachments,
    automated,
    body,
    header,
    language,
    negation,
    office_time,
    recipient,
    sender,
    subject,
    text,
)
from services.classify.conditions.base import Check, ConditionKind, Context
from services.classify.keywords import KeywordIndex

if TYPE_CHECKING:
    from services.classify.schema import Condition

# in the order error messages name them
KINDS: tuple[ConditionKind[Any], ...] = (
    all_of.KIND,
    any_of.KIND,
    negation.KIND,
    recipient.KIND,
    sender.KIND,
    subject.KIND,
    body.KIND,
    text.KIND,
    attachments.KIND,
    language.KIND,
    header.KIND,
    automated.KIND,
    office_time.KIND,
    always.KIND,
)
BY_KEY: dict[str, ConditionKind[Any]] = {kind.key: kind for kind in KINDS}
CONDITION_KEYS = tuple(BY_KEY)


def compile_condition(
    condition: Condition, lists: Mapping[str, tuple[str, ...]], index: KeywordIndex, path: str = "when"
) -> Check:
    """Turn a validated condition into a Check; lists are the named domain/address/date lists.

    Keyword lists join the rule set's one automaton: call index.build() once every rule is compiled.
    """

    def compile_one(child: Condition, child_path: str) -> Check:
        kind = BY_KEY[child.key]
        return kind.compile(child.spec, child_path, context)

    context = Context(lists, index, compile_one)
    return compile_one(condition, path)


def referenced_lists(condition: Condition) -> list[str]:
    """The names of the lists a condition and its children refer to, in order."""
    kind = BY_KEY[condition.key]
    names = list(kind.lists(condition.spec))
    for child in kind.children(condition.spec):
        names.extend(referenced_lists(child))
    return names

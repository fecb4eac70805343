"""What a condition kind declares (key, schema, compiler, lists, children) and what its compiler returns."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from services.classify.facts import MailFacts, TextField
from services.classify.keywords import KeywordIndex
from services.classify.patterns import RegexTimeout, SafePattern, catastrophic

if TYPE_CHECKING:
    from services.classify.schema import Condition

Spec = TypeVar("Spec")
# (text, keyword key) pairs of which at least one must have been found for a condition to match
Requirement = frozenset[tuple[TextField, str]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_regexes(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad regex {pattern!r}: {exc}") from exc
        if catastrophic(pattern):
            raise ValueError(
                f"regex {pattern!r} can take exponential time on some texts (a repetition inside a repetition,"
                " like (a+)+ or (\\w+\\s?)+); rewrite it without the nested repetition"
            )
    return patterns


@dataclass(frozen=True)
class Hit:
    condition: str
    matched: bool
    detail: str = ""


@dataclass
class Trace:
    hits: list[Hit] = field(default_factory=list)

    def record(self, condition: str, matched: bool, detail: str = "") -> bool:
        self.hits.append(Hit(condition, matched, detail))
        return matched


@dataclass(frozen=True)
class Check:
    """A compiled condition: `test` for the worker (no trace), `traced` for explain (every hit and miss).

    `requires`: when none of these keywords occurred, the condition is false and evaluating it has no effect
    on the facts (no regex ran that could time out), so a rule with it may be skipped; None: no such promise.
    """

    test: Callable[[MailFacts], bool]
    traced: Callable[[MailFacts, Trace], bool]
    requires: Requirement | None = None
    may_time_out: bool = False


@dataclass(frozen=True)
class Context:
    """What compilers get besides their spec: named lists, the rule set's keyword index, the child compiler."""

    lists: Mapping[str, tuple[str, ...]]
    index: KeywordIndex
    compile: Callable[[Condition, str], Check]


def _no_lists(_spec: Any) -> list[str]:
    return []


def _no_children(_spec: Any) -> Sequence[Condition]:
    return ()


@dataclass(frozen=True)
class ConditionKind(Generic[Spec]):
    """One condition kind: its YAML key, the pydantic type of its value (a string where it names `Condition`),
    its compiler (spec, trace name, context -> Check), the list names it refers to and its child conditions."""

    key: str
    schema: Any
    compile: Callable[[Spec, str, Context], Check]
    description: str = ""
    lists: Callable[[Spec], list[str]] = _no_lists
    children: Callable[[Spec], Sequence[Condition]] = _no_children


def leaf(
    name: str,
    test: Callable[[MailFacts], bool],
    explain: Callable[[MailFacts], tuple[bool, str]],
    *,
    may_time_out: bool = False,
) -> Check:
    """A condition without children: `explain` gives the verdict with its trace text (only explain asks)."""

    def traced(facts: MailFacts, trace: Trace) -> bool:
        matched, detail = explain(facts)
        return trace.record(name, matched, detail)

    return Check(test, traced, may_time_out=may_time_out)


def combination(
    key: str,
    children: list[Condition],
    path: str,
    context: Context,
    combine: Callable[[Any], bool],
    requires: Callable[[list[Check]], Requirement | None],
) -> Check:
    """`all`/`any` over compiled children: `combine` is the builtin `all` or `any` (both stop at the first
    answer), `requires` the keyword promise the combination can make from its children's."""
    name = f"{path}.{key}"
    parts = [context.compile(child, f"{name}[{i}]") for i, child in enumerate(children)]
    tests = [part.test for part in parts]

    def test(facts: MailFacts) -> bool:
        return combine(one(facts) for one in tests)

    def traced(facts: MailFacts, trace: Trace) -> bool:
        return trace.record(name, combine(part.traced(facts, trace) for part in parts))

    return Check(test, traced, requires(parts), any(part.may_time_out for part in parts))


def bounded_search(pattern: SafePattern, text: str, facts: MailFacts) -> bool:
    """A search that ran out of time counts as no match, and the mail carries a defect that says so."""
    try:
        return pattern.search(text) is not None
    except RegexTimeout:
        facts.timeouts.append(pattern.pattern)
        return False

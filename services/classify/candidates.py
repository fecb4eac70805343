"""Keyword-indexed rules: a rule that needs a keyword is tried only when the index found one of its keywords."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.classify.conditions.base import Requirement
from services.classify.facts import MailFacts, TextField
from services.classify.keywords import KeywordIndex


@dataclass(frozen=True)
class RuleCandidates:
    """The positions of the rules that can match a mail, in rule order (first match stays first match).

    A rule is skipped only when its condition promises (Check.requires) to be false without effect on the facts
    when none of its keywords occurred, so skipping it changes no decision and no flagged regex time-out.
    """

    index: KeywordIndex
    unconditional: tuple[int, ...]
    by_keyword: Mapping[TextField, Mapping[str, tuple[int, ...]]]

    @classmethod
    def of(cls, requirements: Sequence[Requirement | None], index: KeywordIndex) -> RuleCandidates:
        unconditional: list[int] = []
        by_keyword: dict[TextField, dict[str, list[int]]] = {}
        for position, requirement in enumerate(requirements):
            if requirement is None:
                unconditional.append(position)
                continue
            for field, key in requirement:
                by_keyword.setdefault(field, {}).setdefault(key, []).append(position)
        frozen = {field: {key: tuple(rules) for key, rules in keys.items()} for field, keys in by_keyword.items()}
        return cls(index, tuple(unconditional), frozen)

    def for_mail(self, facts: MailFacts) -> Sequence[int]:
        triggered: set[int] = set()
        for field, rules_by_key in self.by_keyword.items():
            for key in facts.keyword_hits(field, self.index):
                rules = rules_by_key.get(key)
                if rules is not None:
                    triggered.update(rules)
        if not triggered:
            return self.unconditional
        triggered.update(self.unconditional)
        return sorted(triggered)

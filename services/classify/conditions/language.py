"""`language: [...]`: the language detected on the mail's own words is one of these."""

from __future__ import annotations

from services.classify.conditions.base import Check, ConditionKind, Context, leaf
from services.classify.facts import MailFacts
from services.domain import DetectedLanguage


def _compile(languages: list[DetectedLanguage], path: str, _context: Context) -> Check:
    wanted = frozenset(languages)

    def explain(facts: MailFacts) -> tuple[bool, str]:
        return facts.language in wanted, facts.language

    return leaf(path + ".language", lambda facts: facts.language in wanted, explain)


KIND: ConditionKind[list[DetectedLanguage]] = ConditionKind(
    key="language", schema=list[DetectedLanguage], compile=_compile
)

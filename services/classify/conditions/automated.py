"""`automated:`: true/false: any automated signal or none; a list: any of these signals (services.mail)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from services.classify.conditions.base import Check, ConditionKind, Context, leaf
from services.classify.facts import MailFacts
from services.mail import AUTOMATED_SIGNALS


def _known_signals(value: bool | list[str]) -> bool | list[str]:
    if isinstance(value, list):
        unknown = [signal for signal in value if signal not in AUTOMATED_SIGNALS]
        if unknown or not value:
            raise ValueError(
                f"unknown automated signal(s) {', '.join(unknown) or '(empty list)'}; known: "
                + ", ".join(sorted(AUTOMATED_SIGNALS))
            )
    return value


def _compile(expected: bool | list[str], path: str, _context: Context) -> Check:
    if isinstance(expected, list):
        wanted = frozenset(expected)

        def test(facts: MailFacts) -> bool:
            return not wanted.isdisjoint(facts.mail.automated_signals)
    else:

        def test(facts: MailFacts) -> bool:
            return bool(facts.mail.automated_signals) == expected

    def explain(facts: MailFacts) -> tuple[bool, str]:
        return test(facts), ",".join(facts.mail.automated_signals)

    return leaf(path + ".automated", test, explain)


KIND: ConditionKind[bool | list[str]] = ConditionKind(
    key="automated",
    schema=Annotated[bool | list[str], AfterValidator(_known_signals)],
    compile=_compile,
    description="true/false: any automated signal or none; a list: any of these signals",
)

"""`header:`: a header exists (or not), equals a value, or matches a regex."""

from __future__ import annotations

from pydantic import field_validator

from services.classify.conditions.base import Check, ConditionKind, Context, Strict, bounded_search, check_regexes, leaf
from services.classify.facts import MailFacts
from services.classify.patterns import SafePattern


class HeaderMatch(Strict):
    name: str
    exists: bool | None = None
    equals: str | None = None
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            check_regexes([value])
        return value


def _compile(header: HeaderMatch, path: str, _context: Context) -> Check:
    pattern = SafePattern(header.regex) if header.regex else None
    equals = header.equals.lower() if header.equals is not None else None

    def test(facts: MailFacts) -> bool:
        values = facts.mail.header_values(header.name)
        if header.exists is not None:
            return bool(values) == header.exists
        if equals is not None:
            return any(v.strip().lower() == equals for v in values)
        if pattern is not None:
            return any(bounded_search(pattern, v, facts) for v in values)
        return bool(values)

    name = f"{path}.header[{header.name}]"
    return leaf(name, test, lambda facts: (test(facts), ""), may_time_out=pattern is not None)


KIND: ConditionKind[HeaderMatch] = ConditionKind(key="header", schema=HeaderMatch, compile=_compile)

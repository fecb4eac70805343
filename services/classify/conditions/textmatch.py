"""Text matches for `subject:`, `body:` and `text:`: keywords through the rule set's index, then regexes."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from services.classify.conditions.base import Check, ConditionKind, Context, Strict, bounded_search, check_regexes, leaf
from services.classify.facts import MailFacts, TextField
from services.classify.patterns import SafePattern

MIN_KEYWORD_LETTERS = 3


class TextMatch(Strict):
    """Keywords match at a word start after case and umlaut folding; a leading '*' matches anywhere."""

    keywords: list[str] = Field(default_factory=list)
    # short whole words ("BG", "EU") that would be refused among `keywords`: matched only as the whole word
    exact: list[str] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)

    @field_validator("keywords")
    @classmethod
    def _long_enough(cls, value: list[str]) -> list[str]:
        for keyword in value:
            core = keyword.strip("* ")
            if core and len(core) < MIN_KEYWORD_LETTERS:
                raise ValueError(
                    f"keyword {keyword!r} is shorter than {MIN_KEYWORD_LETTERS} letters and would match too much;"
                    " write a longer word, or list a short whole word under 'exact:'"
                )
        return value

    @field_validator("exact")
    @classmethod
    def _whole_words(cls, value: list[str]) -> list[str]:
        for word in value:
            if not word.strip() or "*" in word:
                raise ValueError(f"exact word {word!r} must be a plain word, without '*'")
        return value

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: list[str]) -> list[str]:
        return check_regexes(value)

    @model_validator(mode="after")
    def _not_empty(self) -> TextMatch:
        if not self.keywords and not self.exact and not self.regex:
            raise ValueError("needs keywords, exact or regex")
        if any(not keyword.strip("* ") for keyword in self.keywords):
            raise ValueError("empty keyword")
        return self


def text_kind(field: TextField) -> ConditionKind[TextMatch]:
    """The kind that matches one of the mail's texts (subject, own body, or both)."""

    def compile_match(spec: TextMatch, path: str, context: Context) -> Check:
        index = context.index
        regexes = [SafePattern(pattern) for pattern in spec.regex]
        words = [*spec.keywords, *(word.strip() for word in spec.exact)]
        wanted = index.register(words) if words else frozenset()

        def regex_hit(facts: MailFacts) -> str | None:
            written = facts.written(field)
            for regex in regexes:
                if bounded_search(regex, written, facts):
                    return regex.pattern
            return None

        def test(facts: MailFacts) -> bool:
            if wanted and not wanted.isdisjoint(facts.keyword_hits(field, index)):
                return True
            return bool(regexes) and regex_hit(facts) is not None

        def explain(facts: MailFacts) -> tuple[bool, str]:
            if wanted:
                hits = facts.keyword_hits(field, index)
                common = hits.keys() & wanted
                if common:
                    # the first keyword in the text wins, the longest at the same place
                    first = min(common, key=lambda key: (hits[key], -len(key), key.strip("*")))
                    return True, f"keyword {first.strip('*')!r}"
            pattern = regex_hit(facts) if regexes else None
            return (True, f"regex {pattern!r}") if pattern is not None else (False, "")

        check = leaf(f"{path}.{field}", test, explain, may_time_out=bool(regexes))
        if regexes or not wanted:
            return check
        return Check(check.test, check.traced, requires=frozenset((field, key) for key in wanted))

    return ConditionKind(key=field, schema=TextMatch, compile=compile_match)

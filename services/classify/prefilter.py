"""Literal prefilter for rule regexes: skip a regex when the text lacks every word each of its matches contains.

Python's `re` scans the whole text for a pattern that starts with a case-insensitive alternation such as
`(strom|gas|heizung)\\w*...`; most mails contain none of those words, and a substring test is far cheaper.
The required words come from the parsed pattern (the tree `re.compile` itself builds, read through
services/classify/regex_tree.py, the only module touching `re`'s internals). The prefilter must never skip a
regex that would match, so anything not understood yields no requirement and the regex always runs; so does
every regex on a Python whose `re` internals have another shape.
"""

from __future__ import annotations

from typing import Any

from services.classify import regex_tree


def _canonical_table() -> dict[int, int]:
    """Characters `re` treats as one letter under IGNORECASE beyond plain lowercasing (s and long s, the sigmas)."""
    table: dict[int, int] = {}
    for code, others in regex_tree.EXTRA_CASES.items():
        table[code] = min(code, *others)
    return {code: target for code, target in table.items() if code != target}


_CANONICAL = _canonical_table()
# str.lower equals re's per-character lowercase for every character but U+0130, whose full lowercase is two
# characters; re lowercases it to "i" (tests/test_regex_rules.py checks both over all of Unicode).
_BEFORE_LOWER = {0x130: "i"}
_MIN_LENGTH = 3  # a shorter required word is in almost every text: not worth the test


def filter_fold(text: str) -> str:
    """Case-fold so that any two characters `re.IGNORECASE` treats as equal become the same character."""
    return text.translate(_BEFORE_LOWER).lower().translate(_CANONICAL)


def required_words(pattern: str, flags: int) -> frozenset[str] | None:
    """Words (folded with `filter_fold`) of which every match of the pattern contains at least one; None if unknown."""
    if not regex_tree.AVAILABLE:
        return None
    try:
        words = _of_sequence(regex_tree.parse(pattern, flags))
    except Exception:  # an internal re format we do not know: be safe, run the regex always
        return None
    if words is None or min(len(word) for word in words) < _MIN_LENGTH:
        return None
    return words


def _of_sequence(items: list[tuple[Any, Any]]) -> frozenset[str] | None:
    """Every item of a sequence must match, so any one item's requirement holds for the whole; take the best."""
    candidates: list[frozenset[str]] = []
    run: list[str] = []
    for op, argument in [*items, (None, None)]:
        if op is regex_tree.LITERAL:
            run.append(chr(argument))
            continue
        if run:
            candidates.append(frozenset({filter_fold("".join(run))}))
            run = []
        if op is not None and (words := _of_item(op, argument)) is not None:
            candidates.append(words)
    if not candidates:
        return None
    # the most selective requirement: the longest shortest word, then the fewest alternatives
    return max(candidates, key=lambda words: (min(len(word) for word in words), -len(words)))


def _of_item(op: Any, argument: Any) -> frozenset[str] | None:
    if op is regex_tree.SUBPATTERN:
        return _of_sequence(list(argument[-1]))
    if op is regex_tree.ATOMIC_GROUP:
        return _of_sequence(list(argument))
    if op in regex_tree.REPEATS:
        low, _high, body = argument
        return _of_sequence(list(body)) if low >= 1 else None
    if op is regex_tree.BRANCH:
        union: set[str] = set()
        for branch in argument[1]:
            words = _of_sequence(list(branch))
            if words is None:
                return None  # one alternative without a requirement: the whole has none
            union |= words
        return frozenset(union)
    return None  # classes, anchors, back references, look-arounds: no requirement taken from them

"""One Aho–Corasick automaton over every keyword of a rule set: each text is scanned once per mail."""

from __future__ import annotations

from dataclasses import dataclass, field

import ahocorasick

from services.classify.text import fold


def _word_start(text: str, start: int) -> bool:
    if start == 0:
        return True
    before = text[start - 1]
    return not (before.isalnum() or before == "_")


@dataclass
class KeywordIndex:
    """Keywords match at a word start (as `(?<!\\w)` would), or anywhere when written with a leading '*'."""

    _automaton: ahocorasick.Automaton = field(default_factory=ahocorasick.Automaton)
    _anywhere: set[str] = field(default_factory=set)
    _anchored: set[str] = field(default_factory=set)
    _built: bool = False

    def register(self, keywords: list[str]) -> frozenset[str]:
        """Add a rule's keyword list; returns its keys: 'word' (at a word start) or '*word' (anywhere)."""
        keys = set()
        for keyword in keywords:
            word = fold(keyword.lstrip("*").strip())
            if keyword.startswith("*"):
                self._anywhere.add(word)
                keys.add("*" + word)
            else:
                self._anchored.add(word)
                keys.add(word)
            if word not in self._automaton:
                self._automaton.add_word(word, word)
        return frozenset(keys)

    def build(self) -> None:
        if len(self._automaton):
            self._automaton.make_automaton()
        self._built = True

    def scan(self, text: str) -> dict[str, int]:
        """Keys of every registered keyword found in the (folded) text, with the first start position."""
        if not self._built or not len(self._automaton):
            return {}
        found: dict[str, int] = {}
        for end, word in self._automaton.iter(text):
            start = end - len(word) + 1
            if word in self._anywhere:
                found.setdefault("*" + word, start)
            if word in self._anchored and word not in found and _word_start(text, start):
                found[word] = start
        return found

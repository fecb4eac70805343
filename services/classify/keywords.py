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


def _word_end(text: str, end: int) -> bool:
    """True when the match ending at index `end` (inclusive) is not followed by more of the same word."""
    if end + 1 >= len(text):
        return True
    after = text[end + 1]
    return not (after.isalnum() or after == "_")


@dataclass
class KeywordIndex:
    """Keywords match whole words: 'para' does not match 'Paragraph'.

    A trailing '*' matches at a word start (a stem: 'obdachlos*' matches 'obdachlose'); a leading '*' matches
    anywhere (for Arabic clitics).
    """

    _automaton: ahocorasick.Automaton = field(default_factory=ahocorasick.Automaton)
    _anywhere: set[str] = field(default_factory=set)
    _prefix: set[str] = field(default_factory=set)
    _whole: set[str] = field(default_factory=set)
    _built: bool = False

    def register(self, keywords: list[str]) -> frozenset[str]:
        """Add a rule's keyword list; returns its keys: 'word', 'word*' (stem) or '*word' (anywhere)."""
        keys = set()
        for keyword in keywords:
            keyword = keyword.strip()
            word = fold(keyword.strip("*").strip())
            if keyword.startswith("*"):
                self._anywhere.add(word)
                keys.add("*" + word)
            elif keyword.endswith("*"):
                self._prefix.add(word)
                keys.add(word + "*")
            else:
                self._whole.add(word)
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
            if (word in self._prefix or word in self._whole) and _word_start(text, start):
                if word in self._prefix:
                    found.setdefault(word + "*", start)
                if word in self._whole and _word_end(text, end):
                    found.setdefault(word, start)
        return found

"""Text folding (case, umlauts, ß) and compiled keyword matchers shared by rules and checks."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ё": "е", "ı": "i", "\u0307": ""})
_SPACES = re.compile(r"\s+")


def fold(text: str) -> str:
    """Case-fold and spell umlauts out, so 'Kontoauszüge', 'KONTOAUSZUEGE' and 'kontoauszuege' agree."""
    normalized = unicodedata.normalize("NFKC", text).casefold().translate(_UMLAUTS)
    return _SPACES.sub(" ", normalized)


def keyword_pattern(keywords: Iterable[str]) -> re.Pattern[str]:
    """One alternation for a whole keyword list: word-start prefix match, or anywhere with a leading '*'."""
    anchored: list[str] = []
    anywhere: list[str] = []
    for keyword in keywords:
        if keyword.startswith("*"):
            anywhere.append(re.escape(fold(keyword.lstrip("*").strip())))
        else:
            anchored.append(re.escape(fold(keyword.strip())))
    # longest first so that the reported hit is the most specific keyword
    parts: list[str] = []
    if anchored:
        parts.append(r"(?<!\w)(?:" + "|".join(sorted(anchored, key=len, reverse=True)) + ")")
    if anywhere:
        parts.append("(?:" + "|".join(sorted(anywhere, key=len, reverse=True)) + ")")
    return re.compile("|".join(parts) if parts else r"(?!)")

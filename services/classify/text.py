"""Text folding (case, umlauts, ß) shared by rule keywords and the text they are matched against."""

from __future__ import annotations

import re
import unicodedata

_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ё": "е", "ı": "i", "\u0307": ""})
_SPACES = re.compile(r"\s+")


def as_written(text: str) -> str:
    """What rule regexes see: Unicode-normalised (NFKC) with white space runs as one space; case and umlauts kept.

    Collapsing white space lets a regex span the line breaks of a hard-wrapped mail.
    """
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text))


def fold(text: str) -> str:
    """Case-fold and spell umlauts out, so 'Kontoauszüge', 'KONTOAUSZUEGE' and 'kontoauszuege' agree."""
    normalized = unicodedata.normalize("NFKC", text).casefold().translate(_UMLAUTS)
    return _SPACES.sub(" ", normalized)

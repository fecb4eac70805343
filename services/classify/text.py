"""Text folding (case, umlauts, ß) shared by rule keywords and the text they are matched against."""

from __future__ import annotations

import unicodedata

_UMLAUTS = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ё": "е", "ı": "i", "\u0307": ""}


def _spell_out(text: str) -> str:
    """What str.translate with the table above does, as a few C-level scans: 70 times faster on a 3 KB body."""
    for char, spelled in _UMLAUTS.items():
        if char in text:
            text = text.replace(char, spelled)  # no replacement contains a character replaced later
    return text


def collapse_spaces(text: str) -> str:
    r"""Every run of white space as one space: re.sub(r"\s+", " ", text) at a quarter of the cost."""
    words = text.split()
    if not words:
        return " " if text else ""
    return (" " if text[0].isspace() else "") + " ".join(words) + (" " if text[-1].isspace() else "")


def as_written(text: str) -> str:
    """What rule regexes see: Unicode-normalised (NFKC) with white space runs as one space; case and umlauts kept.

    Collapsing white space lets a regex span the line breaks of a hard-wrapped mail.
    """
    return collapse_spaces(unicodedata.normalize("NFKC", text))


def fold(text: str) -> str:
    """Case-fold and spell umlauts out, so 'Kontoauszüge', 'KONTOAUSZUEGE' and 'kontoauszuege' agree."""
    return collapse_spaces(_spell_out(unicodedata.normalize("NFKC", text).casefold()))

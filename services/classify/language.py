"""Language detection of the sender's own words: CLD2 where it is sure, lingua otherwise, in the languages we know."""

from __future__ import annotations

import re
import threading

import pycld2
from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

from services.domain import DEFAULT_LANGUAGE, DETECTED_LANGUAGES

# the detector knows only the languages of services/domain.py: fewer models, and no guess outside them
_SUPPORTED = {Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())): code for code in DETECTED_LANGUAGES}
# at least eight letters (anything but digits, underscores and non-word characters) anywhere in the text
_ENOUGH_LETTERS = re.compile(r"(?:[\W\d_]*[^\W\d_]){8}")
_detector: LanguageDetector | None = None
_lock = threading.Lock()
_CODES = frozenset(DETECTED_LANGUAGES)
# CLD2 decides alone when it calls its answer reliable, finds at least 90 % of the sample in one of our languages
# and read at least 50 bytes of text: on the 5,390 labelled and corpus mails it then decides 4,701 in about a
# sixth of lingua's time, and where the two differ (17 mails, lingua unsure and falling back to German) CLD2 has
# the labelled language every time (docs/classification.md, "Languages")
_CLD2_MIN_PERCENT = 90
_CLD2_MIN_BYTES = 50


def _get_detector() -> LanguageDetector:
    global _detector
    with _lock:
        if _detector is None:
            # Low-accuracy mode scores trigrams only: 20 instead of 267 MiB of models in every worker, a fifth
            # less time, and on the 606 labelled and corpus mails the same languages but one, which it gets
            # right (e0300, an English note above a forwarded German letter; docs/classification.md)
            _detector = (
                LanguageDetectorBuilder.from_languages(*_SUPPORTED)
                .with_minimum_relative_distance(0.05)
                .with_low_accuracy_mode()
                .build()
            )
        return _detector


# lingua's cost grows with the text; a few sentences decide as well: each accuracy mode gives all 606 labelled
# and corpus mails the same language at 250 as at 600 characters (docs/classification.md, "Speed and size")
SAMPLE_CHARS = 300


def _cld2_language(sample: str) -> str | None:
    """CLD2's answer where it is sure of one of our languages, else None (lingua then decides)."""
    try:
        reliable, text_bytes, details = pycld2.detect(sample)
    except (pycld2.error, UnicodeError, ValueError):  # text CLD2 cannot take (lone surrogates, control bytes)
        return None
    code, percent = details[0][1], details[0][2]
    if reliable and code in _CODES and percent >= _CLD2_MIN_PERCENT and text_bytes >= _CLD2_MIN_BYTES:
        return str(code)
    return None


def detect_language(text: str) -> str:
    """ISO 639-1 code of the dominant language, German when unsure (German is always in the reply)."""
    sample = text[:SAMPLE_CHARS]
    if _ENOUGH_LETTERS.match(sample) is None:
        return DEFAULT_LANGUAGE
    quick = _cld2_language(sample)
    if quick is not None:
        return quick
    detected = _get_detector().detect_language_of(sample)
    return _SUPPORTED.get(detected, DEFAULT_LANGUAGE) if detected is not None else DEFAULT_LANGUAGE

"""Rule text: regexes see it as written, the literal prefilter never skips a match, folding is exact."""

from __future__ import annotations

import re
import sys
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from services.classify.engine import MailFacts, Trace, compile_condition
from services.classify.keywords import KeywordIndex
from services.classify.prefilter import filter_fold, required_words
from services.classify.schema import Condition
from services.classify.text import collapse_spaces, fold
from services.config import PROJECT_ROOT
from services.mail import parse_mail
from services.ruleset.loader import load_rules
from tests.support import SERVED, make_mail

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
NOON = datetime(2026, 3, 17, 11, 0, tzinfo=UTC)


def _facts(subject: str, body: str) -> MailFacts:
    mail = parse_mail(make_mail(subject=subject, body=body))
    return MailFacts.build(mail, "buerger@example.org", (SERVED,), "de", NOON)


def _regex_matches(pattern: str, subject: str, body: str) -> bool:
    condition = Condition.model_validate({"text": {"regex": [pattern]}})
    check = compile_condition(condition, {}, KeywordIndex())
    facts = _facts(subject, body)
    matched = check.test(facts)
    assert check.traced(facts, Trace()) is matched  # the worker's test and explain's trace agree
    return matched


def test_regexes_see_case_and_umlauts_as_written() -> None:
    # case-sensitive scope: the abbreviation AU, not the word "au"
    assert _regex_matches(r"(?-i:\be?AU\b)", "Unterlagen", "Anbei meine AU bis Freitag.")
    assert not _regex_matches(r"(?-i:\be?AU\b)", "Unterlagen", "Anbei meine au bis Freitag.")
    assert _regex_matches("vor die tür gesetzt", "Hilfe", "Der Vermieter hat mich vor die Tür gesetzt.")
    assert not _regex_matches("vor die tuer gesetzt", "Hilfe", "Der Vermieter hat mich vor die Tür gesetzt.")


def test_regexes_span_the_line_breaks_of_a_wrapped_mail() -> None:
    body = "Hiermit lege ich\r\nWiderspruch gegen den\r\nBescheid ein"
    assert _regex_matches(r"\bwiderspruch\b[^.!?\n]{0,80}\bein\b", "Widerspruch", body)


def test_shipped_rules_use_their_regexes() -> None:
    mail = parse_mail(make_mail(subject="Hilfe", body="Die Stadtwerke haben uns gestern den Strom abgestellt."))
    result = RULESET.classify(MailFacts.build(mail, "buerger@example.org", (SERVED,), "de", NOON), traced=True)
    assert result.rule_id == "emergency"
    assert any("regex" in hit.detail for trial in result.trials for hit in trial.hits if hit.matched)


def test_a_sick_note_abbreviation_is_learned_by_the_model() -> None:
    # "AU" was a rule regex; the intent model reads it from the examples now
    mail = parse_mail(make_mail(subject="Unterlagen", body="Hallo, anbei meine AU bis Freitag."))
    result = RULESET.classify(MailFacts.build(mail, "buerger@example.org", (SERVED,), "de", NOON))
    assert (result.action.category, result.path) == ("sick_note", "model")


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("ſtrom", {"strom"}),  # long s is an s under IGNORECASE
        ("STROM|Gas", {"strom", "gas"}),
        ("(strom|gas)\\w*\\s+(abgestellt|gesperrt)", {"abgestellt", "gesperrt"}),  # the longer alternatives
        ("bescheid\\w*\\s+(\\S+\\s+){0,5}(läuft|laeuft)", {"bescheid"}),
        ("(?:foo|)barx", {"barx"}),
        ("(?>atom)x", {"atom"}),
        ("x++yyy", {"yyy"}),
        ("(abc){2,}", {"abc"}),
        ("(abc)?x", None),  # optional: nothing is required
        ("(?:abc|)", None),  # an empty alternative requires nothing
        ("a{0,3}", None),
        ("\\bAU\\b", None),  # shorter than three characters: not worth a test
        ("[abc]+def?", None),  # "de": too short
        ("(?=wort)\\w+", None),  # look-arounds are not used
        ("(a)b\\1", None),
    ],
)
def test_required_words(pattern: str, words: set[str] | None) -> None:
    assert required_words(pattern, re.IGNORECASE) == (None if words is None else frozenset(words))


def test_folding_is_per_character_as_in_re() -> None:
    """Folding one character at a time gives one character, so a match's words stay whole in the folded text."""
    everything = "".join(chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF)
    assert len(filter_fold(everything)) == len(everything)
    assert filter_fold(everything) == "".join(filter_fold(char) for char in everything)


def test_folding_agrees_with_ignorecase_on_every_cased_character() -> None:
    cased = [
        chr(code)
        for code in range(sys.maxunicode + 1)
        if not 0xD800 <= code <= 0xDFFF and (chr(code).lower() != chr(code) or chr(code).upper() != chr(code))
    ]
    haystack = "".join(cased)
    for char in cased:
        for equal in re.findall(re.escape(char), haystack, re.IGNORECASE):
            assert filter_fold(equal) == filter_fold(char), (hex(ord(char)), hex(ord(equal)))


def _shipped_regexes() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "regex":
                    found.extend(value if isinstance(value, list) else [value])
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in sorted((PROJECT_ROOT / "routing_rules").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return found


TRICKY_TEXTS = [
    "Der ſtrom wurde ABGESTELLT",  # long s
    "WOHNUNG wird GERÄUMT",
    "WİDERSPRUCH gegen den BESCHEİD lege ich ein",  # dotted capital I
    "ΣΤΡΟΜ ΣΣ ς σ",
    "Bescheid läuft Ende Mai aus",
]


def test_prefilter_never_skips_a_match_of_a_shipped_regex(corpus_dir: Path) -> None:
    regexes = _shipped_regexes()
    assert len(regexes) >= 5  # the safety rules keep regexes; the intent model replaced the others
    texts = list(TRICKY_TEXTS)
    for directory in ("citizen-mails", "thirdparty"):
        for path in sorted((corpus_dir / directory).rglob("*")):
            if path.is_file() and path.suffix in ("", ".eml", ".txt", ".msg", ".mbox"):
                mail = parse_mail(path.read_bytes())
                facts = MailFacts.build(mail, "", (), "de", NOON)
                texts.extend(facts.written(field) for field in ("subject", "body", "text"))
    matched = 0
    for pattern in regexes:
        compiled = re.compile(pattern, re.IGNORECASE)
        words = required_words(pattern, re.IGNORECASE)
        for text in texts:
            if compiled.search(text):
                matched += 1
                assert words is None or any(word in filter_fold(text) for word in words), (pattern, words)
    assert matched >= 10  # the corpus exercises the regexes, so the check above is not vacuous


_TEXT = st.text(alphabet=st.sampled_from("aäöüßÄÖÜẞёıİ\u0307 \t\r\n\x0b\x0c\x1c\x85\xa0\u2028\u3000xZ.!"), max_size=40)


@given(_TEXT)
def test_white_space_collapses_as_the_regex_does(text: str) -> None:
    assert collapse_spaces(text) == re.sub(r"\s+", " ", text)


def test_str_and_re_agree_on_white_space() -> None:
    everything = [chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF]
    assert [char for char in everything if char.isspace()] == re.findall(r"\s", "".join(everything))


@given(_TEXT)
def test_fold_spells_out_as_the_translation_table_does(text: str) -> None:
    table = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ё": "е", "ı": "i", "\u0307": ""})
    assert fold(text) == re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold().translate(table))

"""Rule text: regexes see it as written, white space collapses as the regex does, folding is exact."""

from __future__ import annotations

import re
import sys
import unicodedata
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.classify.engine import MailFacts, Trace, compile_condition
from services.classify.keywords import KeywordIndex
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

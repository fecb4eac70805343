"""Rule regexes see the text as written: case and umlauts kept, white space runs as one space."""

from __future__ import annotations

from datetime import UTC, datetime

from services.classify.engine import MailFacts, Trace, compile_condition
from services.classify.keywords import KeywordIndex
from services.classify.loader import load_rules
from services.classify.schema import Condition
from services.config import PROJECT_ROOT
from services.mail import parse_mail
from tests.support import SERVED, make_mail

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
NOON = datetime(2026, 3, 17, 11, 0, tzinfo=UTC)


def _facts(subject: str, body: str) -> MailFacts:
    mail = parse_mail(make_mail(subject=subject, body=body))
    return MailFacts.build(mail, "buerger@example.org", (SERVED,), "de", NOON)


def _regex_matches(pattern: str, subject: str, body: str) -> bool:
    condition = Condition.model_validate({"text": {"regex": [pattern]}})
    return compile_condition(condition, {}, KeywordIndex())(_facts(subject, body), Trace())


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
    mail = parse_mail(make_mail(subject="Unterlagen", body="Hallo, anbei meine AU bis Freitag."))
    result = RULESET.classify(MailFacts.build(mail, "buerger@example.org", (SERVED,), "de", NOON))
    assert result.rule_id == "sick-note"
    assert any("regex" in hit.detail for trial in result.trials for hit in trial.hits if hit.matched)

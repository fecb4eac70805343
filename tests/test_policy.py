"""Reply policy (RFC 3834 / RFC 5230): each reason not to answer, and the conditions that depend on time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.classify.engine import MailFacts, compile_condition
from services.classify.keywords import KeywordIndex
from services.classify.loader import load_rules
from services.classify.schema import Condition
from services.config import PROJECT_ROOT
from services.mail import parse_mail
from services.reply.policy import PolicyConfig, suppression_reason
from tests.support import SERVED, make_mail

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
CITIZEN = "citizen@example.org"


def reason(
    data: bytes, sender: str = CITIZEN, recipients: tuple[str, ...] = (SERVED,), config: PolicyConfig | None = None
) -> str | None:
    return suppression_reason(parse_mail(data), sender, recipients, RULESET, config or PolicyConfig())


def test_plain_citizen_mail_may_be_answered() -> None:
    assert reason(make_mail()) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Auto-Submitted": "auto-generated"}, "auto-submitted"),
        ({"List-Id": "<news.example.org>"}, "mailing-list"),
        ({"List-Post": "<mailto:l@example.org>"}, "mailing-list"),
        ({"Precedence": "auto_reply"}, "precedence"),
        ({"X-Auto-Response-Suppress": "All"}, "auto-response-suppress"),
        ({"X-Autorespond": "yes"}, "autoreply-header"),
        ({"X-Apple-Action": "VACATION"}, "vacation"),
        ({"X-Spam-Flag": "YES"}, "spam"),
    ],
)
def test_header_signals(headers: dict[str, str], expected: str) -> None:
    assert reason(make_mail(headers=headers)) == expected


def test_envelope_reasons() -> None:
    assert reason(make_mail(), sender="") == "null-sender"
    assert reason(make_mail(), sender="not an address") == "invalid-sender"
    assert reason(make_mail(), sender="MAILER-DAEMON@mx.example.org") == "automated-sender"
    assert reason(make_mail(), sender="list-request@lists.example.org") == "automated-sender"
    assert reason(make_mail(), sender="leistung@jobcenter-musterstadt.example") == "own-address"
    assert reason(make_mail(), sender="postmaster@jobcenter-musterstadt.example") == "automated-sender"
    assert reason(make_mail(), recipients=("someone@elsewhere.example",)) == "not-served"


def test_only_mail_addressed_to_us_is_answered() -> None:
    bcc_copy = make_mail(to="friend@example.net")
    assert reason(bcc_copy) == "not-addressed"
    cc = make_mail(to="friend@example.net", headers={"Cc": "Team 412 <team-412@jobcenter-musterstadt.example>"})
    assert reason(cc) is None


def test_free_text_bounce_from_mailer_daemon() -> None:
    bounce = make_mail(
        subject="Mail delivery failed: returning message to sender",
        sender="MAILER-DAEMON@mx.example.org",
        body="This message was created automatically by mail delivery software.",
    )
    assert reason(bounce, sender="") == "null-sender"
    assert parse_mail(bounce).automated_signals[:2] == ("automated-sender", "bounce")


def test_configurable_spam_score() -> None:
    config = PolicyConfig(spam_score_header="X-Spam-Score", spam_score_threshold=5.0)
    assert reason(make_mail(headers={"X-Spam-Score": "7.3"}), config=config) == "spam-score"
    assert reason(make_mail(headers={"X-Spam-Score": "1.2"}), config=config) is None


def _facts(moment: datetime) -> MailFacts:
    return MailFacts.build(parse_mail(make_mail()), CITIZEN, (SERVED,), "de", moment)


def test_working_time_and_holidays() -> None:
    office = Condition.model_validate(
        {"time": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "hours": "08:00-18:00", "holidays": "holidays"}}
    )
    predicate = compile_condition(office, RULESET.lists, KeywordIndex())
    from services.classify.engine import Trace

    tuesday_morning = datetime(2026, 3, 17, 9, 30, tzinfo=UTC)  # 10:30 in Berlin
    tuesday_night = datetime(2026, 3, 17, 19, 30, tzinfo=UTC)  # 20:30 in Berlin
    saturday = datetime(2026, 3, 21, 9, 30, tzinfo=UTC)
    labour_day = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)  # a Friday, listed in lists/holidays.txt
    assert predicate(_facts(tuesday_morning), Trace())
    assert not predicate(_facts(tuesday_night), Trace())
    assert not predicate(_facts(saturday), Trace())
    assert not predicate(_facts(labour_day), Trace())

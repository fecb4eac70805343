"""Reply policy (RFC 3834 / RFC 5230): each reason not to answer, and the conditions that depend on time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from services.classify.engine import SETTINGS_HOLIDAYS, Check, MailFacts, Trace, compile_condition
from services.classify.keywords import KeywordIndex
from services.classify.schema import Condition
from services.config import PROJECT_ROOT, Settings
from services.mail import InboundMail, parse_mail
from services.reply.authentication import aligned, organisational_domain, read_authentication
from services.reply.policy import (
    PolicyConfig,
    ReplyAuth,
    policy_config,
    reply_domain,
    reply_identity,
    suppression_reason,
)
from services.ruleset.loader import load_rules
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


def _matches(check: Check) -> Callable[[MailFacts], bool]:
    """The worker's test of a condition, asserted to agree with the traced one explain runs."""

    def both(facts: MailFacts) -> bool:
        matched = check.test(facts)
        assert check.traced(facts, Trace()) is matched
        return matched

    return both


def _facts(moment: datetime) -> MailFacts:
    return MailFacts.build(parse_mail(make_mail()), CITIZEN, (SERVED,), "de", moment)


def test_working_time_and_holidays() -> None:
    office = Condition.model_validate(
        {"time": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "hours": "08:00-18:00"}}
    )
    holidays = {SETTINGS_HOLIDAYS: tuple(day.isoformat() for day in RULESET.settings.holidays)}
    predicate = _matches(compile_condition(office, {**RULESET.lists, **holidays}, KeywordIndex()))

    tuesday_morning = datetime(2026, 3, 17, 9, 30, tzinfo=UTC)  # 10:30 in Berlin
    tuesday_night = datetime(2026, 3, 17, 19, 30, tzinfo=UTC)  # 20:30 in Berlin
    saturday = datetime(2026, 3, 21, 9, 30, tzinfo=UTC)
    labour_day = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)  # a Friday, in settings.holidays
    assert predicate(_facts(tuesday_morning))
    assert not predicate(_facts(tuesday_night))
    assert not predicate(_facts(saturday))
    assert not predicate(_facts(labour_day))


MX = "mx01.jobcenter-musterstadt.example"


def _authenticated_mail(*results: str, sender: str = CITIZEN) -> InboundMail:
    """A mail whose hops wrote these Authentication-Results values, the first one topmost."""
    lines = "".join(f"Authentication-Results: {value}\r\n" for value in results)
    return parse_mail(lines.encode() + make_mail(sender=sender))


def test_only_trusted_topmost_results_are_read() -> None:
    mail = _authenticated_mail(
        f"{MX}; dkim=pass header.d=example.org",
        "MX01.Jobcenter-Musterstadt.Example 1; spf=fail smtp.mailfrom=citizen@example.org",
        "relay.elsewhere.example; dmarc=pass header.from=example.org",
        f"{MX}; dmarc=pass header.from=example.org",  # below a foreign hop: could be forged
    )
    auth = read_authentication(mail, [MX])
    assert [(r.method, r.result, r.domain) for r in auth.results] == [
        ("dkim", "pass", "example.org"),
        ("spf", "fail", "example.org"),
    ]
    assert (auth.trusted_headers, auth.ignored_headers) == (2, 2)
    assert read_authentication(mail, []).results == ()


def test_the_topmost_trusted_result_of_a_method_wins() -> None:
    mail = _authenticated_mail(
        f"{MX}; dmarc=fail (p=reject) header.from=example.org",
        f"{MX}; dmarc=pass header.from=example.org; spf=pass smtp.mailfrom=example.org",
    )
    auth = read_authentication(mail, [MX])
    assert [(r.method, r.result) for r in auth.results] == [("dmarc", "fail"), ("spf", "pass")]
    assert auth.failed and not auth.dmarc_pass


def test_an_unreadable_trusted_header_says_nothing() -> None:
    mail = _authenticated_mail(f"{MX}; ((( garbage", f"{MX}; spf=fail")
    auth = read_authentication(mail, [MX])
    assert [(r.method, r.result) for r in auth.results] == [("spf", "fail")]
    assert (auth.trusted_headers, auth.ignored_headers) == (1, 1)


def test_results_authres_refuses_are_read_leniently() -> None:
    """Exchange Online writes properties RFC 8601 does not define (`action=none`); authres refuses the header."""
    value = (
        f"{MX}; spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.org; dkim=pass (signature was verified)"
        " header.d=example.org;dmarc=pass action=none header.from=example.org;compauth=pass reason=100"
    )
    auth = read_authentication(_authenticated_mail(value), [MX])
    assert [(r.method, r.result, r.domain) for r in auth.results] == [
        ("spf", "pass", "example.org"),
        ("dkim", "pass", "example.org"),
        ("dmarc", "pass", "example.org"),
    ]
    assert auth.aligned_pass


def test_organisational_domain_alignment() -> None:
    assert organisational_domain("bounce.mail.example.co.uk") == "example.co.uk"
    assert aligned("bounce.example.org", "example.org") and aligned("example.org", "news.example.org")
    assert not aligned("example.co.uk", "other.co.uk")
    assert not aligned("", "example.org")


AUTH_CASES = [
    # results, aligned, not-failed
    ((f"{MX}; dmarc=pass header.from=example.org",), None, None),
    ((f"{MX}; spf=pass smtp.mailfrom=bounces@mail.example.org; dkim=none",), None, None),
    ((f"{MX}; dkim=pass header.d=example.org header.s=s1; spf=fail smtp.mailfrom=example.org",), None, None),
    ((f"{MX}; dkim=pass header.d=mailer.example.net; spf=none",), "unauthenticated", None),
    ((f"{MX}; dmarc=pass header.from=other.example",), "unauthenticated", None),
    ((), "unauthenticated", None),
    ((f"{MX}; spf=fail smtp.mailfrom=example.org; dkim=none",), "unauthenticated", "auth-failed"),
    ((f"{MX}; spf=softfail smtp.mailfrom=example.org",), "unauthenticated", "auth-failed"),
    ((f"{MX}; spf=fail smtp.mailfrom=example.org; dkim=fail header.d=example.org",), "unauthenticated", "auth-failed"),
    ((f"{MX}; dkim=pass header.d=example.org; dmarc=fail header.from=example.org",), None, "auth-failed"),
    (("relay.elsewhere.example; dmarc=pass header.from=example.org",), "unauthenticated", None),
    (("relay.elsewhere.example; dmarc=fail header.from=example.org",), "unauthenticated", None),
]


@pytest.mark.parametrize(("results", "if_aligned", "if_not_failed"), AUTH_CASES)
def test_reply_auth_policies(results: tuple[str, ...], if_aligned: str | None, if_not_failed: str | None) -> None:
    mail = _authenticated_mail(*results)

    def verdict(mode: ReplyAuth) -> str | None:
        config = PolicyConfig(trusted_authserv_ids=(MX,), reply_auth=mode)
        return suppression_reason(mail, CITIZEN, (SERVED,), RULESET, config)

    assert verdict("aligned") == if_aligned
    assert verdict("not-failed") == if_not_failed
    assert verdict("off") is None


def test_aligned_needs_the_envelope_sender_in_the_from_domain() -> None:
    """A replayed DKIM-signed mail passes for its From domain, but the reply would go to the envelope sender."""
    mail = _authenticated_mail(f"{MX}; dkim=pass header.d=example.org; dmarc=pass header.from=example.org")
    config = PolicyConfig(trusted_authserv_ids=(MX,), reply_auth="aligned")
    assert suppression_reason(mail, "victim@elsewhere.example", (SERVED,), RULESET, config) == "unaligned-envelope"
    assert suppression_reason(mail, "citizen@mail.example.org", (SERVED,), RULESET, config) is None


def test_reply_auth_defaults_to_not_failed_only_with_trusted_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHANNELSHIFT_TRUSTED_AUTHSERV_IDS", f" {MX.upper()} , mx02.example ")
    settings = Settings()
    assert settings.trusted_authserv_id_list == (MX, "mx02.example")
    config = policy_config(settings)
    assert config.reply_auth == "not-failed" and config.trusted_authserv_ids == (MX, "mx02.example")
    monkeypatch.setenv("CHANNELSHIFT_REPLY_AUTH", "aligned")
    assert policy_config(Settings()).reply_auth == "aligned"
    monkeypatch.delenv("CHANNELSHIFT_REPLY_AUTH")
    monkeypatch.delenv("CHANNELSHIFT_TRUSTED_AUTHSERV_IDS")
    assert policy_config(Settings()).reply_auth == "off"


def test_reply_key_folds_case_and_plus_addressing() -> None:
    assert reply_identity("Plus+42@Example.ORG") == reply_identity("plus@example.org") == "plus@example.org"
    assert reply_identity("+tag@example.org") == "+tag@example.org"  # no base address to fold into
    assert reply_identity("first.last@example.org") == "first.last@example.org"
    assert reply_domain("someone@bounce.mail.example.co.uk") == "example.co.uk"


def test_rules_can_name_automated_signals_and_only_known_ones() -> None:
    condition = Condition.model_validate({"automated": ["report", "list-traffic"]})
    predicate = _matches(compile_condition(condition, RULESET.lists, KeywordIndex()))

    report = parse_mail(b"From: MAILER-DAEMON@x.example\r\nContent-Type: multipart/report; boundary=x\r\n\r\n--x--\r\n")
    auto_reply = parse_mail(make_mail(headers={"Auto-Submitted": "auto-replied"}))
    now = datetime(2026, 3, 17, 9, 30, tzinfo=UTC)
    assert predicate(MailFacts.build(report, CITIZEN, (SERVED,), "de", now))
    assert not predicate(MailFacts.build(auto_reply, CITIZEN, (SERVED,), "de", now))
    with pytest.raises(ValueError, match="unknown automated signal"):
        Condition.model_validate({"automated": ["dsn"]})


def test_held_mail_is_delivered_to_the_postmaster_target_or_staff() -> None:
    held = RULESET.rules[0].rule.then
    assert held.deliver is False and RULESET.rules[0].rule.id == "automated-report"
    assert RULESET.settings.delivery_target(held) == "staff"  # the shipped set has no postmaster target
    with_postmaster = RULESET.settings.model_copy(update={"targets": {"staff": None, "postmaster": "pm@x.example"}})
    assert with_postmaster.delivery_target(held) == "postmaster"
    assert with_postmaster.delivery_target(RULESET.rules[1].rule.then) == "staff"


def test_start_up_warns_when_forged_senders_would_get_replies() -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        policy_config(Settings(trusted_authserv_ids=""))
        policy_config(Settings(trusted_authserv_ids=MX))
        policy_config(Settings(trusted_authserv_ids="", reply_auth="aligned"))
        policy_config(Settings(trusted_authserv_ids=""), warn=False)
    assert [entry["event"] for entry in logs] == ["policy.reply_auth_off", "policy.reply_auth_without_trusted_ids"]

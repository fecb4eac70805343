"""The parser: lenient decoding, the sender's own words, attachments, automated signals, hard limits."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.classify.engine import MailFacts
from services.config import PROJECT_ROOT
from services.mail import decode_header_value, forwarded_blocks, html_to_text, own_words, parse_mail
from services.ruleset.loader import load_rules
from services.store.models import utcnow


def test_encoded_word_newlines_are_flattened() -> None:
    assert decode_header_value("=?UTF-8?Q?a=0ABcc:_x@y?=") == "a Bcc: x@y"
    assert "\n" not in decode_header_value("=?UTF-8?Q?=0D=0A=0D=0Ax?=")


def test_unknown_charset_does_not_raise() -> None:
    assert decode_header_value("=?x-unknown-42?Q?caf=E9?=") == "café"
    raw = b"Subject: x\r\nContent-Type: text/plain; charset=x-nonsense\r\n\r\nK\xe4se\r\n"
    assert "se" in parse_mail(raw).body_text


def test_quotes_and_reply_headers_are_not_the_senders_words() -> None:
    text = (
        "Ich bin einverstanden.\n\nAm 03.03.2026 um 10:00 schrieb Jobcenter <info@x.de>:\n"
        "> Widerspruch ist innerhalb eines Monats ...\n"
    )
    assert own_words(text) == "Ich bin einverstanden."
    outlook = "Danke.\n\nVon: Jobcenter\nGesendet: Montag, 2. März 2026\nBetreff: Widerspruch\n\nText"
    assert own_words(outlook) == "Danke."
    forwarded = "FYI\n---------- Forwarded message ---------\nFrom: a\nobjection"
    assert own_words(forwarded) == "FYI"


FORWARDED_PAYSLIP = (
    "---------- Weitergeleitete Nachricht ----------\n"
    "Von: Personalbüro <personal@example.org>\n"
    "Betreff: Lohnabrechnung\n"
    "Anbei Ihre Abrechnung.\n"
    "----------\n"
    "\n"
    "Hier die Abrechnung, der Bescheid stimmt so nicht.\n"
)


def test_the_senders_words_below_a_closed_forwarded_block_are_theirs() -> None:
    assert own_words(FORWARDED_PAYSLIP) == "Hier die Abrechnung, der Bescheid stimmt so nicht."
    assert own_words("Hallo,\n" + FORWARDED_PAYSLIP) == "Hallo,\n\nHier die Abrechnung, der Bescheid stimmt so nicht."
    ended = FORWARDED_PAYSLIP.replace("----------\n\n", "--- Ende der weitergeleiteten Nachricht ---\n")
    assert own_words(ended) == "Hier die Abrechnung, der Bescheid stimmt so nicht."
    assert "Anbei" in forwarded_blocks(FORWARDED_PAYSLIP) and "Hier" not in forwarded_blocks(FORWARDED_PAYSLIP)
    mail = parse_mail(b"Subject: WG: Lohnabrechnung\r\n\r\n" + FORWARDED_PAYSLIP.replace("\n", "\r\n").encode())
    assert mail.own_text == "Hier die Abrechnung, der Bescheid stimmt so nicht."


def test_a_forwarded_block_that_is_not_closed_by_the_sender_ends_their_words() -> None:
    # a dashed line inside the forwarded letter followed by another quoted layer is not the sender's text
    nested = FORWARDED_PAYSLIP.replace(
        "\nHier die Abrechnung", "Am 1. Dezember 2026 um 10:00 schrieb A <a@b.de>:\n> alt"
    )
    assert own_words("FYI\n" + nested) == "FYI"
    # underscores (Outlook's separator, signatures) do not close a block
    underscored = FORWARDED_PAYSLIP.replace("----------\n\n", "__________\n")
    assert own_words("FYI\n" + underscored) == "FYI"
    # a closing line with nothing of the sender's below it
    assert own_words("FYI\n" + FORWARDED_PAYSLIP.split("----------\n\n")[0] + "----------\n") == "FYI"


def test_html_only_mail_and_blockquotes() -> None:
    html = "<html><body><p>Hallo,<br>anbei die Unterlagen.</p><blockquote>Widerspruch alt</blockquote></body></html>"
    text = html_to_text(html)
    assert "anbei die Unterlagen." in text
    assert "Widerspruch" not in own_words(text)


def test_attachments_with_rfc2231_names() -> None:
    raw = (
        b"From: a@example.org\r\nTo: info@jobcenter-musterstadt.example\r\nSubject: x\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\n\r\nanbei\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=iso-8859-1''Nebenkostenabrechnung_M%E4rz.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"
    )
    [attachment] = parse_mail(raw).attachments
    assert attachment.filename == "Nebenkostenabrechnung_März.pdf"
    assert attachment.content_type == "application/pdf" and attachment.size == 5


def test_deep_nesting_and_many_parts_are_bounded() -> None:
    depth = 1000
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    raw = (
        b"From: a@example.org\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n"
        + nested
        + b"Content-Type: text/plain\r\n\r\nhi\r\n"
    )
    start = time.process_time()
    mail = parse_mail(raw)
    assert mail.subject == "bomb" and mail.defects
    many = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(5000))
    raw_many = (
        b"From: a@example.org\r\nSubject: many\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + many + b"--b--\r\n"
    )
    assert parse_mail(raw_many).parse_limited
    addresses = b", ".join(b"u%d@example.org" % i for i in range(50_000))
    assert len(parse_mail(b"From: a@example.org\r\nTo: " + addresses + b"\r\n\r\nx").to_addresses) <= 200
    assert time.process_time() - start < 60  # bounded, not a speed test


def test_automated_signals() -> None:
    def signals(headers: str, sender: str = "a@example.org", ctype: str = "text/plain") -> tuple[str, ...]:
        raw = f"From: {sender}\r\nSubject: Hallo\r\nContent-Type: {ctype}\r\n{headers}\r\nText\r\n".encode()
        return parse_mail(raw).automated_signals

    assert signals("Auto-Submitted: auto-replied\r\n") == ("auto-submitted",)
    assert signals("Auto-Submitted: no\r\n") == ()
    assert signals("List-Unsubscribe: <mailto:x@y>\r\n") == ("mailing-list",)
    assert signals("Precedence: junk\r\n") == ("precedence",)
    assert signals("X-Auto-Response-Suppress: OOF, DR\r\n") == ("auto-response-suppress",)
    assert signals("X-Autoreply: yes\r\n") == ("autoreply-header",)
    assert signals("X-Apple-Action: VACATION\r\n") == ("vacation",)
    assert signals("X-Spam-Flag: YES\r\n") == ("spam",)
    assert signals("", ctype="multipart/report; report-type=delivery-status; boundary=x") == ("report",)
    for sender in (
        "MAILER-DAEMON@x.org",
        "no-reply@shop.example",
        "owner-list@x.org",
        "list-request@x.org",
        "postmaster@x.org",
        "donotreply@x.org",
    ):
        assert "automated-sender" in signals("", sender=sender), sender


def _signals_of(headers: str, to: str = "info@jobcenter-musterstadt.example") -> tuple[str, ...]:
    raw = f"From: a@example.org\r\nTo: {to}\r\nSubject: Hallo\r\n{headers}\r\nText\r\n".encode()
    return parse_mail(raw).automated_signals


@pytest.mark.parametrize(
    "headers",
    [
        "Auto-Submitted: no\r\nAuto-Submitted: auto-generated\r\n",
        "Auto-Submitted: auto-generated\r\nAuto-Submitted: no\r\n",
        "Precedence: first-class\r\nPrecedence: bulk\r\n",
        "X-Spam-Flag: NO\r\nX-Spam-Flag: YES\r\n",
        "X-Auto-Response-Suppress: DR\r\nX-Auto-Response-Suppress: All\r\n",
    ],
)
def test_any_instance_saying_automated_wins(headers: str) -> None:
    assert _signals_of(headers) != ()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ("X-Loop: info@jobcenter-musterstadt.example\r\n", "loop"),
        ("X-Loop: \r\n", "loop"),
        ("X-Ack: no\r\n", "no-ack"),
        ("Feedback-ID: 1234:campaign:esp\r\n", "feedback-id"),
        ("X-Spam-Status: Yes, score=15.2 required=5.0 tests=FORGED_MUA\r\n", "spam"),
        ("X-Spamd-Result: default: True [15.20 / 15.00]; R_SPF_FAIL(1.00)[-all]\r\n", "spam"),
        ("X-Rspamd-Action: reject\r\n", "spam"),
        ("X-Rspamd-Action: add header\r\n", "spam"),
        ("X-Rspamd-Action: rewrite subject\r\n", "spam"),
    ],
)
def test_loop_ack_feedback_and_filter_verdicts(headers: str, expected: str) -> None:
    assert _signals_of(headers) == (expected,)


@pytest.mark.parametrize(
    "headers",
    [
        "X-Spam-Status: No, score=1.2 required=5.0\r\n",
        "X-Spam-Flag: NO\r\n",
        "X-Spamd-Result: default: False [1.50 / 15.00]; DKIM_VALID(-0.1)[]\r\n",
        "X-Rspamd-Action: no action\r\n",
        "X-Rspamd-Action: greylist\r\n",
        "X-Ack: yes\r\n",
    ],
)
def test_ham_verdicts_are_no_signal(headers: str) -> None:
    assert _signals_of(headers) == ()


def test_list_traffic_is_mail_written_to_the_list_address() -> None:
    list_headers = "List-Id: SGB II Forum <sgb2-forum.lists.example.net>\r\n"
    assert _signals_of(list_headers, to="sgb2-forum@lists.example.net") == ("mailing-list", "list-traffic")
    post = "List-Post: <mailto:forum@lists.example.net>\r\n"
    assert _signals_of(post, to="Forum <forum@lists.example.net>") == ("mailing-list", "list-traffic")
    # a newsletter with List-Unsubscribe, written to us: automated, but not list traffic (it is not held)
    assert _signals_of(list_headers) == ("mailing-list",)


RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000) | st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_parser_and_classifier_never_raise(raw: bytes) -> None:
    mail = parse_mail(raw)
    facts = MailFacts.build(mail, "a@example.org", ("info@jobcenter-musterstadt.example",), "de", utcnow())
    assert RULESET.classify(facts).action.category


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["Subject", "From", "To", "Content-Type", "Message-ID", "Auto-Submitted"]),
        st.text(max_size=200),
        max_size=6,
    ),
    st.text(max_size=500),
)
def test_structured_messages_always_get_a_decision(headers: dict[str, str], body: str) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    raw = (head + "\r\n" + body).encode("utf-8", "surrogatepass")
    mail = parse_mail(raw)
    facts = MailFacts.build(mail, "a@example.org", ("info@jobcenter-musterstadt.example",), "de", utcnow())
    assert RULESET.classify(facts).rule_id

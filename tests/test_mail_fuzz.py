"""A seeded fuzz run of parse_mail and MailFacts over MIME-shaped input: never raises, stays linear, defects are strings.

Derandomised (the same examples on every run) and sized to take well under a minute on CI.
"""

from __future__ import annotations

import time
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.classify.engine import MailFacts
from services.config import PROJECT_ROOT
from services.mail import _decoded_size, parse_mail
from services.ruleset.loader import load_rules
from services.store.models import utcnow

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=1200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EOL = st.sampled_from([b"\r\n", b"\n", b"\r"])
NAMES = st.sampled_from(
    [
        b"From",
        b"To",
        b"Cc",
        b"Subject",
        b"Content-Type",
        b"Content-Transfer-Encoding",
        b"Content-Disposition",
        b"MIME-Version",
        b"Auto-Submitted",
        b"List-Id",
        b"X-Spam-Flag",
        b"Received",
        b"a",
    ]
)
VALUES = st.sampled_from(
    [
        b"a@example.org",
        b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= <x@y.de>",
        b"=?x-unknown?b?////?=",
        b"multipart/mixed; boundary=b",
        b'multipart/alternative; boundary="b"',
        b"text/html; charset=utf-8",
        b"text/plain; charset=x-nonsense",
        b"message/rfc822",
        b"base64",
        b"quoted-printable",
        b"x-uuencode",
        b"attachment; filename*=utf-8''%E4%FF.pdf",
        b"auto-replied",
        b"<list.example.org>",
        b"YES",
        b"u1@x.de, u2@x.de,\r\n u3@x.de",
        b"",
    ]
) | st.binary(max_size=60)
BODY_PIECES = st.sampled_from(
    [
        b"--b",
        b"--b--",
        b"Guten Tag, ich habe eine Frage.",
        b"<a",
        b"<p x='",
        b"<div><b>",
        b"<html><body><blockquote>Widerspruch</blockquote>",
        b"=C3=BC=",
        b"QUJDRA==",
        b"begin 644 x\nM86)C\n`\nend",
        b"> zitiert",
        b"Am 1. M\xe4rz schrieb X:",
        b"\x00\xff\xfe",
        b"",
    ]
) | st.binary(max_size=40)


@st.composite
def mime_like(draw: st.DrawFn) -> bytes:
    """Header lines and body lines of MIME pieces, joined by mixed line ends (bare CR and LF included)."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        name, value = draw(NAMES), draw(VALUES)
        out += [name + b": " + value, draw(EOL)]
        if draw(st.booleans()) and draw(st.booleans()):
            out += [b" " + draw(VALUES), draw(EOL)]  # a folded continuation
    out.append(draw(EOL))
    for _ in range(draw(st.integers(0, 30))):
        out += [draw(BODY_PIECES), draw(EOL)]
    return b"".join(out)


def _decide(raw: bytes) -> None:
    mail = parse_mail(raw)
    assert isinstance(mail.defects, tuple) and all(isinstance(defect, str) for defect in mail.defects)
    assert "\n" not in mail.subject and "\r" not in mail.subject
    facts = MailFacts.build(mail, "a@example.org", ("info@jobcenter-musterstadt.example",), "de", utcnow())
    assert RULESET.classify(facts).action.category


@FUZZ
@given(mime_like())
def test_mime_shaped_input_never_raises(raw: bytes) -> None:
    _decide(raw)


# Linear: a unit repeated to about 2 MB must parse and classify within a ceiling that a quadratic step would
# pass by orders of magnitude (html.parser took 100 s for 200 KB), not a speed test.
SCALED_BYTES = 2 * 1024 * 1024
SCALED_CEILING_SECONDS = 4.0


@settings(FUZZ, max_examples=50)
@given(mime_like(), st.lists(BODY_PIECES, min_size=1, max_size=6), EOL)
def test_input_scaled_to_megabytes_stays_linear(head: bytes, unit: list[bytes], eol: bytes) -> None:
    piece = eol.join(unit) + eol
    raw = head + piece * (SCALED_BYTES // max(len(piece), 1))
    started = time.process_time()
    _decide(raw)
    assert time.process_time() - started < SCALED_CEILING_SECONDS


def _part(cte: bytes, payload: bytes) -> Message:
    raw = b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: " + cte + b"\r\n\r\n" + payload
    return BytesParser(policy=compat32).parsebytes(raw)


@FUZZ
@given(
    st.sampled_from([b"base64", b"BASE64", b"quoted-printable", b"7bit", b"x-uuencode"]),
    st.lists(
        st.sampled_from([b"QUJD", b"RA==", b"R", b"=", b"*", b"\xc3\xa4", b"\r\n", b"\n", b"\r", b" "]), max_size=40
    ),
)
def test_attachment_size_is_what_the_stdlib_decodes(cte: bytes, pieces: list[bytes]) -> None:
    part = _part(cte, b"".join(pieces))
    decoded = part.get_payload(decode=True)
    assert _decoded_size(part) == (len(decoded) if isinstance(decoded, bytes) else 0)

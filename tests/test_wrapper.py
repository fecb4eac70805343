"""The wrapper for staff: always 7-bit and 998-clean, the original inside unchanged, re-encoded or as a file."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default as default_policy

import pytest

from services.reply.wrapper import OCTET_STREAM, RFC822, Wrapper, build_wrapper, clean_original, is_clean

ROUTING = {"X-Channelshift-Category": "objection", "X-Channelshift-Priority": "high", "X-Channelshift-Id": "m1"}


def _wrap(raw: bytes, recipients: list[str] | None = None) -> tuple[Wrapper, EmailMessage]:
    wrapper = build_wrapper(
        raw,
        ROUTING,
        message_id="m1",
        reason="relay answered 500",
        from_address="info@jobcenter.example",
        recipients=recipients or ["staff@jobcenter.example"],
        hostname="gateway.test",
    )
    assert is_clean(wrapper.data)
    parsed = email.message_from_bytes(wrapper.data, policy=default_policy)
    assert isinstance(parsed, EmailMessage) and not parsed.defects
    return wrapper, parsed


def _inner(parsed: EmailMessage) -> EmailMessage:
    [part] = list(parsed.iter_attachments())
    assert part.get_content_type() == RFC822
    inner = part.get_content()
    assert isinstance(inner, EmailMessage)
    return inner


def test_a_clean_original_is_attached_byte_for_byte() -> None:
    raw = b"From: citizen@example.org\r\nSubject: Antrag\r\nX-Channelshift-Category: forged\r\n\r\nHallo\r\n"
    wrapper, parsed = _wrap(raw)
    assert wrapper.form == RFC822 and not wrapper.reencoded
    assert b"From: citizen@example.org\r\nSubject: Antrag\r\n\r\nHallo\r\n" in wrapper.data  # forged header gone
    assert parsed["X-Channelshift-Category"] == "objection" and parsed["X-Channelshift-Id"] == "m1"
    assert parsed["Reply-To"] == "citizen@example.org" and parsed["Subject"] == "[Original als Anhang] Antrag"
    assert parsed["To"] == "staff@jobcenter.example" and parsed["Message-ID"] == "<m1.wrapper@gateway.test>"


def test_long_header_lines_are_folded_and_8bit_headers_encoded() -> None:
    long_value = " ".join(f"wort{i}" for i in range(20_000))
    raw = (
        "From: Jürgen Müller <j@example.org>\r\nSubject: Grüße\r\nX-Long: " + long_value + "\r\n\r\nHallo\r\n"
    ).encode()
    wrapper, parsed = _wrap(raw)
    assert wrapper.form == RFC822 and wrapper.reencoded
    inner = _inner(parsed)
    assert inner["X-Long"].split() == long_value.split()
    assert inner["From"].addresses[0].display_name == "Jürgen Müller" and inner["Subject"] == "Grüße"
    assert parsed["Subject"] == "[Original als Anhang] Grüße"


def test_one_overlong_word_becomes_encoded_words_that_decode_to_it() -> None:
    raw = b"From: a@example.org\r\nX-Token: " + b"z" * 99_990 + b"\r\n\r\nhi\r\n"
    wrapper, parsed = _wrap(raw)
    assert wrapper.form == RFC822
    assert _inner(parsed)["X-Token"] == "z" * 99_990


def test_8bit_and_overlong_body_parts_are_base64_with_the_same_content() -> None:
    html = "<p>" + "Grüße " * 3000 + "</p>"
    raw = (
        b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"pre \xff\r\n--b\r\nContent-Type: text/plain; charset=latin-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"Gr\xfc\xdfe\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n--b--\r\n"
    )
    wrapper, parsed = _wrap(raw)
    assert wrapper.reencoded
    leaves = [part for part in _inner(parsed).walk() if not part.is_multipart()]
    assert [part.get_content().strip() for part in leaves] == ["Grüße", html]


def test_8bit_body_without_mime_headers_gets_a_charset() -> None:
    _wrapper, parsed = _wrap("From: a@example.org\r\nSubject: x\r\n\r\nGrüße aus Köln\r\n".encode())
    inner = _inner(parsed)
    assert inner.get_content().strip() == "Grüße aus Köln" and inner["MIME-Version"] == "1.0"


def test_what_cannot_be_a_clean_message_goes_as_octet_stream() -> None:
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n" % (i, i) for i in range(1000))
    raw = b"From: a@example.org\r\nMIME-Version: 1.0\r\n" + nested + b"Content-Type: text/plain\r\n\r\n" + b"x" * 5000
    assert clean_original(raw) is None
    wrapper, parsed = _wrap(raw)
    assert wrapper.form == OCTET_STREAM
    [part] = list(parsed.iter_attachments())
    assert part.get_content_type() == OCTET_STREAM and part.get_content() == raw
    assert "application/octet-stream" in str(parsed.get_body(("plain",)).get_content())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "subject",
    [b"=?utf-8?q?Hallo=0D=0ABcc:_victim@example.org?=", b"Hallo\r\n\tBcc: victim@example.org", b"a\x00b\x1bc"],
)
def test_the_subject_never_brings_a_header_or_a_control_character(subject: bytes) -> None:
    _wrapper, parsed = _wrap(b"From: a@example.org\r\nSubject: " + subject + b"\r\n\r\nhi\r\n")
    assert parsed["Bcc"] is None
    assert all(ch.isprintable() for ch in str(parsed["Subject"]))


def test_utf8_recipients_do_not_appear_in_the_7bit_headers() -> None:
    _wrapper, parsed = _wrap(b"From: a@example.org\r\n\r\nhi\r\n", recipients=["bürgerbüro@jobcenter.example"])
    assert parsed["To"] == "undisclosed-recipients:;"


def test_a_parser_bomb_is_attached_as_it_came_not_regenerated() -> None:
    """Issue 19: the wrapper path must not parse what the parser's budgets refused (70 s for this mail)."""
    from tests.mime_bombs import bare_cr_boundaries

    bomb = bare_cr_boundaries(5 * 1024 * 1024)
    assert clean_original(bomb) is None

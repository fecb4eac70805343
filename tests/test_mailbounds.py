"""The pre-scan before the stdlib parser: mail within the limits is untouched, past them it is cut where it is safe."""

from __future__ import annotations

from services.mail import parse_mail
from services.mailbounds import (
    MAX_HEADER_BLOCK_BYTES,
    MAX_HEADER_LINES,
    MIN_LINE_BUDGET,
    PARSE_PREFIX_BYTES,
    bound,
    boundary_lines,
    line_count,
)
from tests.support import make_mail


def test_mail_within_the_limits_is_given_to_the_parser_unchanged() -> None:
    raw = make_mail(subject="Frage", body="Guten Tag,\r\nich habe eine Frage.\r\n" * 200)
    assert bound(raw).raw is raw and bound(raw).defects == ()
    # no empty line at all: the first line that is no header line ends the block, as in the stdlib
    no_separator = b"Subject: x\r\n" + b"Text ohne Leerzeile\r\n" * 60_000
    assert bound(no_separator).raw is no_separator


def test_line_ends_are_counted_as_the_stdlib_splits_them() -> None:
    assert line_count(b"a\r\nb\nc\rd") == 3
    assert line_count(b"\r\r\n\n") == 3
    assert boundary_lines(b"x\r\n--b\r--b\n--b--") == 3


def test_too_many_header_lines_keep_the_first_and_the_body() -> None:
    raw = b"From: a@example.org\r\nSubject: Frage\r\n" + b"X-A: b\r\n" * (MAX_HEADER_LINES + 5) + b"\r\nHallo Welt\r\n"
    bounded = bound(raw)
    assert bounded.defects == (f"limit:header-lines>{MAX_HEADER_LINES}",)
    assert bounded.raw.count(b"X-A: b") == MAX_HEADER_LINES - 2 and bounded.raw.endswith(
        b"X-A: b\r\n\r\nHallo Welt\r\n"
    )
    mail = parse_mail(raw)
    assert mail.subject == "Frage" and mail.body_text.strip() == "Hallo Welt" and mail.parse_limited


def test_an_overlong_header_line_is_dropped_with_the_rest_of_the_block() -> None:
    raw = b"Subject: Frage\r\nTo: " + b"u@example.org," * (MAX_HEADER_BLOCK_BYTES // 14) + b"\r\nX: y\r\n\r\nText\r\n"
    bounded = bound(raw)
    assert bounded.raw == b"Subject: Frage\r\n\r\nText\r\n"
    assert bounded.defects == (f"limit:header-block>{MAX_HEADER_BLOCK_BYTES}",)


def test_bare_cr_lines_past_the_budget_leave_a_short_prefix() -> None:
    raw = b"Subject: x\r\rHallo" + b"\r" * (2 * MIN_LINE_BUDGET)
    bounded = bound(raw)
    assert f"limit:lines>{MIN_LINE_BUDGET}" in bounded.defects
    assert len(bounded.raw) <= PARSE_PREFIX_BYTES and line_count(bounded.raw) <= MIN_LINE_BUDGET
    assert parse_mail(raw).subject == "x"

"""Forged X-Channelshift-* fields are dropped from the original exactly as a line-by-line walk drops them."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from services.reply.original import strip_our_headers

_HEADER_END = re.compile(rb"(\r?\n)\r?\n")
_OURS = re.compile(rb"^x-channelshift-", re.IGNORECASE)


def line_by_line(raw: bytes) -> bytes:
    """The former implementation: every header line in a list, continuation lines follow their field."""
    match = _HEADER_END.search(raw)
    head, rest = (raw[: match.end(1)], raw[match.end(1) :]) if match else (raw, b"")
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = bool(_OURS.match(line))
        if not dropping:
            kept.append(line)
    return b"".join(kept) + rest


PIECES = st.sampled_from(
    [
        b"X-Channelshift-Category: forged",
        b"x-CHANNELSHIFT-flags:",
        b"Subject: x-channelshift-",
        b" folded",
        b"\tx",
        b"From: a@example.org",
        b" X-Channelshift-Id: 1",
        b"",
        b"Hallo",
        b"a:b",
    ]
)


@settings(derandomize=True, database=None, max_examples=2000, deadline=None)
@given(st.lists(st.tuples(PIECES, st.sampled_from([b"\r\n", b"\n", b"\r", b""])), max_size=12))
def test_forged_fields_are_dropped_as_line_by_line(lines: list[tuple[bytes, bytes]]) -> None:
    raw = b"".join(text + end for text, end in lines)
    assert strip_our_headers(raw) == line_by_line(raw)


def test_a_header_bomb_with_one_forged_field_is_stripped_without_a_line_list() -> None:
    raw = b"X-Channelshift-Category: forged\r\n continued\r\n" + b"a:b\r\n" * 1_000_000 + b"\r\nHallo\r\n"
    stripped = strip_our_headers(raw)
    assert stripped == raw[len(b"X-Channelshift-Category: forged\r\n continued\r\n") :]

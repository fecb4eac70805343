"""The gateway's SMTP session: our address parser must answer exactly as aiosmtpd's own for MAIL and RCPT."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.server import parse_command_address

EXAMPLES = [
    "",
    "<>",
    "<citizen@example.org>",
    "<citizen@example.org> SIZE=3000 BODY=8BITMIME",
    "citizen@example.org",
    "  <citizen@example.org>",
    "<@relay.example:citizen@example.org>",
    '<"quoted local"@example.org>',
    "<bürger@beispiel.de> SMTPUTF8",
    "<citizen@[127.0.0.1]>",
    "<citizen@example.org",
    "citizen@",
    "@example.org",
    "<a@b@c>",
    "<" + "x" * 70 + "@example.org>",
    "<" + "x" * 64 + "@example.org>",
    "<citizen@example.org>\r\n",
    "<(comment)citizen@example.org>",
    "<citizen@example.org>>",
    "not an address at all",
]


def outcome(parse: Callable[[], tuple[str | None, str | None]]) -> object:
    """The parsed pair, or the exception type: the stdlib parser raises on some inputs, aiosmtpd answers 500."""
    try:
        return parse()
    except Exception as exc:
        return type(exc)


def same_as_upstream(arg: str, limit: int) -> None:
    ours = outcome(lambda: parse_command_address(arg, limit))
    theirs = outcome(lambda: SMTP._getaddr(SimpleNamespace(local_part_limit=limit), arg))  # type: ignore[arg-type]
    assert ours == theirs


@pytest.mark.parametrize("limit", [0, 64])
@pytest.mark.parametrize("arg", EXAMPLES)
def test_same_answer_as_aiosmtpd(arg: str, limit: int) -> None:
    same_as_upstream(arg, limit)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('<>@."() \\:;,[]abcxyzäö0-_+=\t'), max_size=40), st.sampled_from([0, 4, 64]))
def test_same_answer_as_aiosmtpd_on_generated_input(arg: str, limit: int) -> None:
    same_as_upstream(arg, limit)

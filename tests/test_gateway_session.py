"""The gateway's SMTP session: the quick address path must answer exactly as aiosmtpd's own for MAIL and RCPT."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import addresses
from services.gateway.addresses import upstream_has_expected_shape, with_quick_addresses

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
    "<a.b+tag@sub.example.org> SIZE=1",
    "<a@b> (comment) SIZE=1",
    "<a@b>  SIZE=1",
    "<a@b> \tSIZE=1",
    "<a@b> ",
    "<a@b> =1",
    "<a..b@c>",
    "<a@b..c>",
    "<.a@b>",
    "<a@b.>",
    "<a@b> X\r\n",
]


def outcome(parse: Callable[[], tuple[str | None, str | None]]) -> object:
    """The parsed pair, or the exception type: the stdlib parser raises on some inputs, aiosmtpd answers 500."""
    try:
        return parse()
    except Exception as exc:
        return type(exc)


QUICK = with_quick_addresses(SMTP)


def same_as_upstream(arg: str, limit: int) -> None:
    ours = outcome(lambda: QUICK._getaddr(SimpleNamespace(local_part_limit=limit), arg))  # type: ignore[arg-type]
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


_ATEXT = "abcxyzABZ019!#$%&'*+/=?^_`{|}~-"


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.text(alphabet=_ATEXT + ".", min_size=0, max_size=8), min_size=1, max_size=3).map(".".join),
    st.lists(st.text(alphabet=_ATEXT + ".[]", min_size=0, max_size=8), min_size=1, max_size=3).map(".".join),
    st.one_of(
        st.text(alphabet=st.sampled_from(" \t\r\n()<>=Aa0ä"), max_size=12),
        st.tuples(st.sampled_from(["", " ", "  ", " (c) ", "\t", " ("]), st.sampled_from(["SIZE=1", "=", "ä", ""])).map(
            "".join
        ),
    ),
    st.sampled_from([0, 4, 64]),
)
def test_same_answer_as_aiosmtpd_for_plain_addresses(local: str, domain: str, rest: str, limit: int) -> None:
    """Mostly what the regex fast path takes (and its near misses: empty atoms, odd separators, CFWS after '>')."""
    same_as_upstream(f"<{local}@{domain}>{rest}", limit)


def test_the_installed_aiosmtpd_gets_the_quick_path() -> None:
    """aiosmtpd as pinned in pyproject.toml has the expected `_getaddr`: the comparisons above test the override."""
    assert addresses.EXPECTED_SHAPE and QUICK is not SMTP


def test_an_aiosmtpd_with_another_getaddr_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    class Renamed(SMTP):
        _getaddr = None  # type: ignore[assignment]

    class OtherSignature(SMTP):
        def _getaddr(self, arg: str, strict: bool = True) -> tuple[str | None, str | None]:
            return super()._getaddr(arg)

    class OtherAnswers(SMTP):
        def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
            return arg, ""

    for changed in (Renamed, OtherSignature, OtherAnswers):
        assert not upstream_has_expected_shape(changed), changed
    monkeypatch.setattr(addresses, "EXPECTED_SHAPE", False)
    assert with_quick_addresses(SMTP) is SMTP

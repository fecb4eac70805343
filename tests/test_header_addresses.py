"""The regex path for plain addresses answers what the stdlib's getaddresses / parseaddr answer, on every input."""

from __future__ import annotations

import email.utils
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.header_addresses import address_pairs, parsed_address

ROOT = Path(__file__).resolve().parent.parent
ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc", "reply-to", "sender")


def _stdlib_addresses(values: list[str]) -> list[str]:
    return [address for _name, address in email.utils.getaddresses(values) if address]


def _ours(values: list[str]) -> list[str]:
    return [address for _name, address in address_pairs(values) if address]


def _header_values(directories: list[Path]) -> list[list[str]]:
    found = []
    for directory in directories:
        for path in sorted(directory.rglob("*.eml")):
            message = BytesHeaderParser(policy=compat32).parsebytes(path.read_bytes())
            for name in ADDRESS_HEADERS:
                values = [str(v) for v in message.get_all(name, [])]
                if values:
                    found.append(values)
    return found


def _assert_same(values: list[str]) -> None:
    assert _ours(values) == _stdlib_addresses(values), values
    for value in values:
        assert parsed_address(value) == email.utils.parseaddr(value), value


def test_every_address_header_of_the_repository_mails_reads_the_same() -> None:
    headers = _header_values([ROOT / "routing_rules", ROOT / "tests" / "data"])
    assert len(headers) > 7_000
    for values in headers:
        _assert_same(values)


def test_every_address_header_of_the_corpus_reads_the_same(corpus_dir: Path) -> None:
    headers = _header_values([corpus_dir])
    assert len(headers) > 500
    for values in headers:
        _assert_same(values)


TRICKY = [
    "Hans Müller <hans@example.org>",
    '"Müller, Hans" <hans@example.org>',
    '"Hans \\"Jo\\" Müller" <hans@example.org>',
    "Dr. Hans  Müller\r\n <hans@example.org>",
    "=?utf-8?q?M=C3=BCller?= <hans@example.org>",
    "hans@example.org (Hans)",
    "<hans@example.org>, <eva@example.org>",
    "hans@example.org,,eva@example.org",
    "hans@example.org, ",
    "undisclosed-recipients:;",
    "team: a@example.org, b@example.org;",
    "<@route.example:hans@example.org>",
    "hans@[127.0.0.1]",
    "hans..x@example.org",
    "hans@example..org",
    '"hans x"@example.org',
    "a@b@c",
    "Hans <hans@example.org",
    "<MAILER-DAEMON>",
    "",
    "   ",
    "Hans\u00a0Müller <hans@example.org>",
    '"Hans\r\n Müller" <hans@example.org>',
    "a@example.org <b@example.org>",
]


def test_tricky_values_read_the_same() -> None:
    for value in TRICKY:
        _assert_same([value])
    _assert_same(TRICKY)


_piece = st.sampled_from(
    [
        "hans",
        "eva.x",
        "@",
        "<",
        ">",
        ",",
        '"',
        " ",
        "\t",
        "\r\n ",
        ".",
        "(",
        ")",
        ":",
        ";",
        "\\",
        "[",
        "]",
        "example.org",
        "Müller",
        "=?utf-8?q?x?=",
        "\u00a0",
        "!#$",
    ]
)


@settings(max_examples=3_000, deadline=None)
@given(st.lists(st.lists(_piece, max_size=12).map("".join), min_size=1, max_size=3))
def test_generated_values_read_the_same(values: list[str]) -> None:
    _assert_same(values)

"""Addresses in From/To/Cc values: plain forms by one regex, everything else by the stdlib's `getaddresses`."""

from __future__ import annotations

import email.utils
import re

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_ADDRESS = rf"{_DOT_ATOM}@{_DOT_ATOM}"
# a display name the stdlib reads as a phrase: words (any letters, dots) or one quoted string without escapes
_WS = r"[ \t\r\n]"  # the whitespace the stdlib's address parser skips (not `\s`: no-break spaces are text to it)
_NAME = rf'(?:(?P<words>[^()<>@,;:"\[\]\\]*)|{_WS}*"(?P<quoted>[^"\\\r\n]*)"{_WS}*)'
# `Name <local@domain>`, `<local@domain>` or `local@domain`, with nothing else around it
_PLAIN = re.compile(rf"{_WS}*(?:{_NAME}<(?P<angle>{_ADDRESS})>|(?P<bare>{_ADDRESS})){_WS}*")
_LWS = re.compile(rf"{_WS}+")


def _plain_address(value: str) -> str | None:
    match = _PLAIN.fullmatch(value)
    if match is None:
        return None
    return match["angle"] or match["bare"]


def address_pairs(values: list[str]) -> list[tuple[str, str]]:
    """What `email.utils.getaddresses(values)` returns, as far as the addresses go (names are left empty).

    The stdlib parses every value character by character (about 40 µs for a mail's From, To and Cc); nearly
    every real value is one or a few plain addresses, which the regex reads in a microsecond. A value with a
    quote, comment, group, route or empty list element goes to the stdlib whole, so the answer cannot differ
    (tests/test_header_addresses.py compares both on every corpus header and on generated values).
    """
    pairs: list[tuple[str, str]] = []
    for value in values:
        parts = [value] if '"' in value else value.split(",")
        found = [_plain_address(part) for part in parts]
        if not all(found):
            return email.utils.getaddresses(values)
        pairs.extend(("", address) for address in found if address)
    return pairs


def parsed_address(value: str) -> tuple[str, str]:
    """What `email.utils.parseaddr(value)` returns: (display name, address), plain forms without the stdlib."""
    match = _PLAIN.fullmatch(value)
    if match is None:
        return email.utils.parseaddr(value)
    if match["bare"]:
        return "", match["bare"]
    if match["quoted"] is not None:
        return match["quoted"], match["angle"]
    return " ".join(word for word in _LWS.split(match["words"] or "") if word), match["angle"]

"""The one place that overrides aiosmtpd's private `SMTP._getaddr`: plain `<local@domain>` by regex, else upstream."""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace
from typing import Any

from aiosmtpd.smtp import SMTP

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# `<local@domain>` of plain ASCII dot-atoms, then nothing or one space and a parameter: nearly every MAIL and RCPT
_PLAIN_ANGLE_ADDRESS = re.compile(
    rf"<(?P<address>(?P<local>{_ATOM}(?:\.{_ATOM})*)@{_ATOM}(?:\.{_ATOM})*)>(?: (?P<rest>[A-Za-z0-9].*))?", re.DOTALL
)
# answers aiosmtpd 1.4.6 gives; a release that answers otherwise (or renames the method) gets no override
_PROBES: dict[tuple[str, int], tuple[str | None, str | None]] = {
    ("", 0): ("", ""),
    ("<citizen@example.org> SIZE=1", 0): ("citizen@example.org", "SIZE=1"),
    ("<citizen@example.org>", 4): (None, None),
    ("<a@b@c>", 0): (None, None),
}


def quick_address(arg: str, local_part_limit: int) -> tuple[str | None, str | None] | None:
    """What `SMTP._getaddr` answers for a plain `<local@domain>` argument; None for any other (ask upstream)."""
    plain = _PLAIN_ANGLE_ADDRESS.fullmatch(arg)
    if plain is None:
        return None
    if local_part_limit and len(plain["local"]) > local_part_limit:
        return None, None
    return plain["address"], plain["rest"] or ""


def upstream_has_expected_shape(session_class: type[SMTP] = SMTP) -> bool:
    """True if the installed aiosmtpd's `_getaddr` is the `(self, arg)` method this override was measured against."""
    method = getattr(session_class, "_getaddr", None)
    if not inspect.isfunction(method) or list(inspect.signature(method).parameters) != ["self", "arg"]:
        return False
    try:
        return all(
            method(SimpleNamespace(local_part_limit=limit), arg) == answer for (arg, limit), answer in _PROBES.items()
        )
    except Exception:  # an upstream that needs more of the session than local_part_limit
        return False


EXPECTED_SHAPE = upstream_has_expected_shape()


def with_quick_addresses(base: type[SMTP]) -> type[SMTP]:
    """`base` reading plain MAIL/RCPT addresses without aiosmtpd's per-call `typing.Protocol` class (bench/README.md).

    Returns `base` itself when the installed aiosmtpd does not have the expected `_getaddr`: the public
    behaviour, only slower. tests/test_gateway_session.py checks both paths answer alike.
    """
    if not EXPECTED_SHAPE:
        return base

    upstream: Any = base._getaddr

    class QuickAddressSession(base):  # type: ignore[misc, valid-type]
        def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
            quick = quick_address(arg, self.local_part_limit)
            return upstream(self, arg) if quick is None else quick

    return QuickAddressSession

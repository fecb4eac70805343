"""Authentication-Results (RFC 8601) of trusted hops: did the From domain authenticate, or did it fail?"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import authres
import authres.dmarc
from publicsuffixlist import PublicSuffixList

from services.mail import InboundMail

_AUTHRES = authres.FeatureContext(authres.dmarc)
_AUTHSERV_ID = re.compile(r"^\s*(?:\([^)]*\)\s*)*([^\s;()]+)")
_METHODS = ("dmarc", "spf", "dkim")
_COMMENT = re.compile(r"\([^()]*\)")
_RESINFO = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=\s*([A-Za-z0-9_-]+)")
_PROPERTY = re.compile(r"\b(smtp|header|body|policy)\s*\.\s*([A-Za-z0-9_-]+)\s*=\s*([^\s;]+)", re.IGNORECASE)
# RFC 7208: softfail is "probably not authorised"; for a reply that could land in a forged victim's mailbox
# it counts as a failure like fail.
_SPF_FAILED = frozenset({"fail", "softfail", "hardfail"})


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list shipped in the package; no network


def organisational_domain(domain: str) -> str:
    """The registrable domain (DMARC's organisational domain): a.b.example.co.uk -> example.co.uk."""
    domain = domain.strip().strip(".").lower()
    if not domain:
        return ""
    return _public_suffixes().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str) -> bool:
    """DMARC relaxed alignment: the same organisational domain."""
    if not domain or not from_domain:
        return False
    return organisational_domain(domain) == organisational_domain(from_domain)


@dataclass(frozen=True)
class MethodResult:
    method: str
    result: str
    domain: str  # header.from (dmarc), smtp.mailfrom's domain (spf), header.d (dkim); may be empty


@dataclass(frozen=True)
class SenderAuthentication:
    """What the trusted hops said about this mail's sender."""

    from_domain: str
    results: tuple[MethodResult, ...] = ()
    trusted_headers: int = 0
    ignored_headers: int = 0

    def _of(self, method: str) -> list[MethodResult]:
        return [r for r in self.results if r.method == method]

    @property
    def dmarc_pass(self) -> bool:
        # DMARC's pass already means aligned; a result about another From domain does not count
        return any(r.result == "pass" and (not r.domain or r.domain == self.from_domain) for r in self._of("dmarc"))

    @property
    def aligned_pass(self) -> bool:
        """DMARC pass, or an SPF or DKIM pass for a domain aligned with the From domain."""
        if not self.from_domain:
            return False
        return self.dmarc_pass or any(
            r.result == "pass" and aligned(r.domain, self.from_domain) for r in (*self._of("spf"), *self._of("dkim"))
        )

    @property
    def failed(self) -> bool:
        """DMARC fails, or SPF fails and no DKIM signature passes."""
        if any(r.result == "fail" for r in self._of("dmarc")):
            return True
        spf_failed = any(r.result in _SPF_FAILED for r in self._of("spf"))
        return spf_failed and not any(r.result == "pass" for r in self._of("dkim"))


def _authserv_id(value: str) -> str:
    found = _AUTHSERV_ID.match(value)
    return found.group(1).lower() if found else ""


def _domain_of(value: str | None) -> str:
    if not value:
        return ""
    return value.rpartition("@")[2].strip().strip(".").lower()


def _property(result: Any, kind: str, name: str) -> str | None:
    for prop in getattr(result, "properties", None) or ():
        if str(prop.type).lower() == kind and str(prop.name).lower() == name:
            return str(prop.value) if prop.value is not None else None
    return None


def _method_result(result: Any) -> MethodResult | None:
    method = str(getattr(result, "method", "") or "").lower()
    if method not in _METHODS:
        return None
    if method == "dmarc":
        domain = _domain_of(_property(result, "header", "from"))
    elif method == "spf":
        domain = _domain_of(_property(result, "smtp", "mailfrom"))
    else:
        domain = _domain_of(_property(result, "header", "d") or _property(result, "header", "i"))
    return MethodResult(method, str(getattr(result, "result", "") or "").lower(), domain)


def _results(value: str) -> list[MethodResult] | None:
    """The dmarc/spf/dkim results of one header value; None if it cannot be read at all."""
    try:
        parsed = _AUTHRES.parse_value(value).results
    except (authres.AuthResError, ValueError, IndexError, AttributeError, TypeError):
        return _lenient_results(value)
    return [r for r in map(_method_result, parsed) if r is not None]


def _lenient_results(value: str) -> list[MethodResult] | None:
    """For what authres refuses but MTAs write, e.g. Exchange Online's `dmarc=pass action=none header.from=x`."""
    text = _COMMENT.sub(" ", value)
    found: list[MethodResult] = []
    for resinfo in text.split(";")[1:]:
        head = _RESINFO.match(resinfo)
        if head is None:
            continue
        method, result = head.group(1).lower(), head.group(2).lower()
        if method not in _METHODS:
            continue
        props = {(t.lower(), n.lower()): v for t, n, v in _PROPERTY.findall(resinfo)}
        key = {"dmarc": [("header", "from")], "spf": [("smtp", "mailfrom")]}.get(
            method, [("header", "d"), ("header", "i")]
        )
        domain = next((_domain_of(props[k]) for k in key if k in props), "")
        found.append(MethodResult(method, result, domain))
    return found or None


def read_authentication(mail: InboundMail, trusted_ids: Iterable[str]) -> SenderAuthentication:
    """The results of the topmost Authentication-Results instances written by trusted authserv-ids.

    Headers are read top-down (the nearest hop first). The first instance from an id that is not trusted marks
    a hop we do not trust: it and everything below it may be forged and is ignored. For each method the
    topmost trusted instance that reports it wins, so a forged copy below the real one changes nothing.
    """
    trusted = {item.strip().lower() for item in trusted_ids if item.strip()}
    from_domain = _domain_of(mail.from_address)
    values = mail.header_values("authentication-results")
    results: list[MethodResult] = []
    seen_methods: set[str] = set()
    used = 0
    for value in values:
        if _authserv_id(value) not in trusted:
            return SenderAuthentication(from_domain, tuple(results), used, len(values) - used)
        found = _results(value)
        if found is None:
            continue  # unreadable: it says nothing we could believe; the instances below are still ours
        used += 1
        new_methods = {r.method for r in found} - seen_methods
        results.extend(r for r in found if r.method in new_methods)
        seen_methods |= new_methods
    return SenderAuthentication(from_domain, tuple(results), used, len(values) - used)

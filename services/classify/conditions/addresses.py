"""Address matches for `sender:` and `recipient:`: exact addresses, domains, globs or a named list."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from pydantic import Field, model_validator

from services.classify.conditions.base import Check, ConditionKind, Context, Strict, leaf
from services.classify.facts import MailFacts


class AddressMatch(Strict):
    """Addresses exactly, domains (with '*.' or '.' prefix for subdomains), globs, or named lists."""

    address: list[str] = Field(default_factory=list)
    domain: list[str] = Field(default_factory=list)
    glob: list[str] = Field(default_factory=list)
    list_name: str | None = Field(default=None, alias="list")

    @model_validator(mode="after")
    def _not_empty(self) -> AddressMatch:
        if not (self.address or self.domain or self.glob or self.list_name):
            raise ValueError("needs address, domain, glob or list")
        return self


def domain_matches(domain: str, pattern: str) -> bool:
    pattern = pattern.lower().strip()
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) or domain == pattern[2:]
    if pattern.startswith("."):
        return domain.endswith(pattern) or domain == pattern[1:]
    return domain == pattern


class DomainPatterns:
    """`any(domain_matches(domain, p) for p in patterns)` in one set lookup per dot of the domain.

    A partner list holds dozens of domains and every mail is checked against it; the loop cost more than all
    other rule conditions together.
    """

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, patterns: list[str]) -> None:
        exact: set[str] = set()
        suffixes: set[str] = set()
        for raw in patterns:
            pattern = raw.lower().strip()
            if pattern.startswith("*."):
                pattern = pattern[1:]
            if pattern.startswith("."):
                suffixes.add(pattern)
                exact.add(pattern[1:])
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._suffixes = frozenset(suffixes)

    def match(self, domain: str) -> bool:
        if domain in self._exact:
            return True
        if self._suffixes:
            dot = domain.find(".")
            while dot >= 0:
                if domain[dot:] in self._suffixes:
                    return True
                dot = domain.find(".", dot + 1)
        return False


def address_kind(key: str, pick: Callable[[MailFacts], tuple[str, ...]]) -> ConditionKind[AddressMatch]:
    """The kind `key` that matches the addresses `pick` takes from a mail."""

    def compile_match(spec: AddressMatch, path: str, context: Context) -> Check:
        addresses = {a.lower() for a in spec.address}
        domain_list = [d.lower() for d in spec.domain]
        globs = [g.lower() for g in spec.glob]
        if spec.list_name:
            for entry in context.lists.get(spec.list_name, ()):
                if "@" in entry:
                    addresses.add(entry)
                else:
                    domain_list.append(entry)
        domains = DomainPatterns(domain_list)

        def explain(facts: MailFacts) -> tuple[bool, str]:
            for address in pick(facts):
                domain = address.rpartition("@")[2]
                if address in addresses:
                    return True, "address"
                if domains.match(domain):
                    return True, f"domain {domain}"
                if any(fnmatch.fnmatchcase(address, pattern) for pattern in globs):
                    return True, "glob"
            return False, ""

        return leaf(f"{path}.{key}", lambda facts: explain(facts)[0], explain)

    def lists(spec: AddressMatch) -> list[str]:
        return [spec.list_name] if spec.list_name else []

    return ConditionKind(key=key, schema=AddressMatch, compile=compile_match, lists=lists)

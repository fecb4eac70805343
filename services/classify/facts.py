"""The view of one mail that rule conditions look at: folded texts computed once, on first use."""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Literal

from services.classify.keywords import KeywordIndex
from services.classify.language import detect_language
from services.classify.text import as_written, fold
from services.mail import InboundMail

TextField = Literal["subject", "body", "text"]


class MailFacts:
    """One mail with its envelope and language; the folded and as-written texts are computed on first use.

    `timeouts` is what an evaluation found, not a cache: the patterns whose search ran out of time on this mail
    (each counted as not matching), which the verdict flags to staff.
    """

    def __init__(
        self,
        mail: InboundMail,
        envelope_from: str,
        envelope_to: tuple[str, ...],
        language: str,
        received_at: datetime,
    ) -> None:
        self.mail = mail
        self.envelope_from = envelope_from.lower()
        self.envelope_to = tuple(address.lower() for address in envelope_to)
        self.language = language
        self.received_at = received_at
        self.timeouts: list[str] = []
        # per text: the index it was scanned with and what it found (a mail may meet more than one rule set)
        self._keyword_hits: dict[TextField, tuple[KeywordIndex, dict[str, int]]] = {}

    @classmethod
    def build(
        cls, mail: InboundMail, envelope_from: str, envelope_to: tuple[str, ...], language: str, received_at: datetime
    ) -> MailFacts:
        return cls(mail, envelope_from, envelope_to, language, received_at)

    @classmethod
    def of(
        cls, mail: InboundMail, envelope_from: str, envelope_to: tuple[str, ...], received_at: datetime
    ) -> MailFacts:
        """The facts of a mail as the worker, explain and replay see them: language detected on own words."""
        language = detect_language(mail.subject + "\n" + mail.own_text)
        return cls(mail, envelope_from, envelope_to, language, received_at)

    @cached_property
    def subject(self) -> str:
        return fold(self.mail.subject)

    @cached_property
    def body(self) -> str:
        return fold(self.mail.own_text)

    @cached_property
    def text(self) -> str:
        return self.subject + "\n" + self.body

    @cached_property
    def written_subject(self) -> str:
        """The subject as written (case and umlauts kept), for regexes."""
        return as_written(self.mail.subject)

    @cached_property
    def written_body(self) -> str:
        return as_written(self.mail.own_text)

    @cached_property
    def written_text(self) -> str:
        return self.written_subject + "\n" + self.written_body

    def folded(self, field: TextField) -> str:
        if field == "subject":
            return self.subject
        return self.body if field == "body" else self.text

    def written(self, field: TextField) -> str:
        if field == "subject":
            return self.written_subject
        return self.written_body if field == "body" else self.written_text

    def keyword_hits(self, field: TextField, index: KeywordIndex) -> dict[str, int]:
        """The keys of `index` found in the folded text, with their first position; scanned once per index."""
        cached = self._keyword_hits.get(field)
        if cached is not None and cached[0] is index:
            return cached[1]
        hits = index.scan(self.folded(field))
        self._keyword_hits[field] = (index, hits)
        return hits

    @property
    def senders(self) -> tuple[str, ...]:
        return tuple(address for address in (self.mail.from_address, self.envelope_from) if address)

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.envelope_to, *self.mail.to_addresses, *self.mail.cc_addresses)

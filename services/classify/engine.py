"""Compiled rules and the first-match engine; every evaluation records hits and misses for explain."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from services.classify.examples import AUTOMATED, RULE_ONLY_CATEGORIES
from services.classify.features import model_text
from services.classify.keywords import KeywordIndex
from services.classify.language import detect_language
from services.classify.patterns import RegexTimeout, SafePattern
from services.classify.prefilter import filter_fold, required_words
from services.classify.schema import PRIORITIES, Action, AddressMatch, Condition, Rule, RuleSettings, TextMatch
from services.classify.text import as_written, fold
from services.domain import SAFETY_CATEGORIES, SAFETY_PRIORITY, safety_outranks
from services.mail import InboundMail, is_machine_report

if TYPE_CHECKING:
    from services.classify.hybrid import IntentResult
    from services.classify.training import TrainedIntent
    from services.reply.render import ReplyRenderer

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class MailFacts:
    """The folded, precomputed view of one mail that conditions look at."""

    mail: InboundMail
    envelope_from: str
    envelope_to: tuple[str, ...]
    language: str
    received_at: datetime
    subject: str
    body: str
    text: str
    # subject, body and text as written (case and umlauts kept), for regexes
    written: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    keyword_hits: dict[str, dict[str, int]] = field(default_factory=dict, compare=False, repr=False)
    prefilter_texts: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # patterns whose search ran out of time on this mail (each counted as not matching)
    timeouts: list[str] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def build(
        cls, mail: InboundMail, envelope_from: str, envelope_to: tuple[str, ...], language: str, received_at: datetime
    ) -> MailFacts:
        subject, body = fold(mail.subject), fold(mail.own_text)
        written_subject, written_body = as_written(mail.subject), as_written(mail.own_text)
        return cls(
            mail=mail,
            envelope_from=envelope_from.lower(),
            envelope_to=tuple(a.lower() for a in envelope_to),
            language=language,
            received_at=received_at,
            subject=subject,
            body=body,
            text=subject + "\n" + body,
            written={"subject": written_subject, "body": written_body, "text": written_subject + "\n" + written_body},
        )

    @classmethod
    def of(
        cls, mail: InboundMail, envelope_from: str, envelope_to: tuple[str, ...], received_at: datetime
    ) -> MailFacts:
        """The facts of a mail as the worker, explain and replay see them: language detected on own words."""
        language = detect_language(mail.subject + "\n" + mail.own_text)
        return cls.build(mail, envelope_from, envelope_to, language, received_at)

    @property
    def senders(self) -> tuple[str, ...]:
        return tuple(address for address in (self.mail.from_address, self.envelope_from) if address)

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.envelope_to, *self.mail.to_addresses, *self.mail.cc_addresses)


@dataclass(frozen=True)
class Hit:
    condition: str
    matched: bool
    detail: str = ""


@dataclass
class Trace:
    hits: list[Hit] = field(default_factory=list)

    def record(self, condition: str, matched: bool, detail: str = "") -> bool:
        self.hits.append(Hit(condition, matched, detail))
        return matched


Predicate = Callable[[MailFacts, Trace], bool]


@dataclass(frozen=True)
class RuleTrial:
    rule_id: str
    matched: bool
    hits: tuple[Hit, ...]


@dataclass(frozen=True)
class Classification:
    """Which layer decided (path), with the rule trials and, when the model was asked, its scores."""

    rule: Rule
    action: Action
    trials: tuple[RuleTrial, ...]
    path: str = "rule"  # rule | model | safety | uncertain
    scores: tuple[tuple[str, float], ...] = ()
    escalated: bool = False

    @property
    def rule_id(self) -> str:
        return self.rule.id if self.path == "rule" else f"{self.path}:{self.action.category}"

    @property
    def confidence(self) -> str:
        return "low" if self.path == "uncertain" else "high"


def domain_matches(domain: str, pattern: str) -> bool:
    pattern = pattern.lower().strip()
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:]) or domain == pattern[2:]
    if pattern.startswith("."):
        return domain.endswith(pattern) or domain == pattern[1:]
    return domain == pattern


def _address_predicate(
    name: str, spec: AddressMatch, lists: Mapping[str, tuple[str, ...]], pick: Callable[[MailFacts], tuple[str, ...]]
) -> Predicate:
    addresses = {a.lower() for a in spec.address}
    domains = [d.lower() for d in spec.domain]
    globs = [g.lower() for g in spec.glob]
    if spec.list_name:
        for entry in lists.get(spec.list_name, ()):
            if "@" in entry:
                addresses.add(entry)
            else:
                domains.append(entry)

    def check(facts: MailFacts, trace: Trace) -> bool:
        for address in pick(facts):
            domain = address.rpartition("@")[2]
            if address in addresses:
                return trace.record(name, True, "address")
            if any(domain_matches(domain, pattern) for pattern in domains):
                return trace.record(name, True, f"domain {domain}")
            if any(fnmatch.fnmatchcase(address, pattern) for pattern in globs):
                return trace.record(name, True, "glob")
        return trace.record(name, False)

    return check


def _text_predicate(name: str, spec: TextMatch, field_name: str, index: KeywordIndex) -> Predicate:
    regexes = [(SafePattern(pattern), required_words(pattern, re.IGNORECASE)) for pattern in spec.regex]
    words = [*spec.keywords, *(word.strip() for word in spec.exact)]
    wanted = index.register(words) if words else frozenset()

    def check(facts: MailFacts, trace: Trace) -> bool:
        text: str = getattr(facts, field_name)
        if wanted:
            hits = facts.keyword_hits.get(field_name)
            if hits is None:
                hits = facts.keyword_hits[field_name] = index.scan(text)
            common = hits.keys() & wanted
            if common:
                # the first keyword in the text wins, the longest at the same place, as the trace shows
                first = min(common, key=lambda key: (hits[key], -len(key), key.strip("*")))
                return trace.record(name, True, f"keyword {first.strip('*')!r}")
        written = facts.written[field_name]
        for regex, words in regexes:
            if words is not None:
                folded = facts.prefilter_texts.get(field_name)
                if folded is None:
                    folded = facts.prefilter_texts[field_name] = filter_fold(written)
                if not any(word in folded for word in words):
                    continue  # none of the words every match contains: the regex cannot match
            if _bounded_search(regex, written, facts):
                return trace.record(name, True, f"regex {regex.pattern!r}")
        return trace.record(name, False)

    return check


def _bounded_search(pattern: SafePattern, text: str, facts: MailFacts) -> bool:
    """A search that ran out of time counts as no match, and the mail carries a defect that says so."""
    try:
        return pattern.search(text) is not None
    except RegexTimeout:
        facts.timeouts.append(pattern.pattern)
        return False


# the name under which the loader passes settings.holidays to `time:` conditions that name no list of their own
# (no list file can have it: list names are file stems without '@')
SETTINGS_HOLIDAYS = "@settings.holidays"


def compile_condition(
    condition: Condition, lists: Mapping[str, tuple[str, ...]], index: KeywordIndex, path: str = "when"
) -> Predicate:
    """Turn a validated condition into a predicate; lists are the named domain/address lists.

    Keyword lists join the rule set's one automaton: call index.build() once every rule is compiled.
    """
    if condition.all_ is not None:
        parts = [compile_condition(c, lists, index, f"{path}.all[{i}]") for i, c in enumerate(condition.all_)]
        return lambda facts, trace: trace.record(path + ".all", all(p(facts, trace) for p in parts))
    if condition.any_ is not None:
        parts = [compile_condition(c, lists, index, f"{path}.any[{i}]") for i, c in enumerate(condition.any_)]
        return lambda facts, trace: trace.record(path + ".any", any(p(facts, trace) for p in parts))
    if condition.not_ is not None:
        inner = compile_condition(condition.not_, lists, index, f"{path}.not")
        return lambda facts, trace: trace.record(path + ".not", not inner(facts, trace))
    if condition.recipient is not None:
        return _address_predicate(path + ".recipient", condition.recipient, lists, lambda f: f.recipients)
    if condition.sender is not None:
        return _address_predicate(path + ".sender", condition.sender, lists, lambda f: f.senders)
    if condition.subject is not None:
        return _text_predicate(path + ".subject", condition.subject, "subject", index)
    if condition.body is not None:
        return _text_predicate(path + ".body", condition.body, "body", index)
    if condition.text is not None:
        return _text_predicate(path + ".text", condition.text, "text", index)
    if condition.attachments is not None:
        spec = condition.attachments

        def attachments(facts: MailFacts, trace: Trace) -> bool:
            found = [
                a
                for a in facts.mail.attachments
                if (not spec.mime_types or any(fnmatch.fnmatchcase(a.content_type, m.lower()) for m in spec.mime_types))
                and (not spec.filename or any(fnmatch.fnmatch(a.filename.lower(), g.lower()) for g in spec.filename))
            ]
            minimum = spec.min_count if spec.min_count is not None else 1
            ok = len(found) >= minimum and (spec.max_count is None or len(found) <= spec.max_count)
            return trace.record(path + ".attachments", ok, f"{len(found)} matching")

        return attachments
    if condition.language is not None:
        wanted = set(condition.language)
        return lambda facts, trace: trace.record(path + ".language", facts.language in wanted, facts.language)
    if condition.header is not None:
        header = condition.header
        header_regex = SafePattern(header.regex) if header.regex else None

        def header_check(facts: MailFacts, trace: Trace) -> bool:
            values = facts.mail.header_values(header.name)
            if header.exists is not None:
                ok = bool(values) == header.exists
            elif header.equals is not None:
                ok = any(v.strip().lower() == header.equals.lower() for v in values)
            elif header_regex is not None:
                ok = any(_bounded_search(header_regex, v, facts) for v in values)
            else:
                ok = bool(values)
            return trace.record(f"{path}.header[{header.name}]", ok)

        return header_check
    if condition.automated is not None:
        expected = condition.automated
        if isinstance(expected, list):
            wanted_signals = frozenset(expected)
            return lambda facts, trace: trace.record(
                path + ".automated",
                not wanted_signals.isdisjoint(facts.mail.automated_signals),
                ",".join(facts.mail.automated_signals),
            )
        return lambda facts, trace: trace.record(
            path + ".automated",
            bool(facts.mail.automated_signals) == expected,
            ",".join(facts.mail.automated_signals),
        )
    if condition.time is not None:
        spec_time = condition.time
        zone = ZoneInfo(spec_time.timezone)
        holidays = set(lists.get(spec_time.holidays or SETTINGS_HOLIDAYS, ()))

        def time_check(facts: MailFacts, trace: Trace) -> bool:
            local = facts.received_at.astimezone(zone)
            ok = local.date().isoformat() not in holidays
            if ok and spec_time.weekdays:
                ok = _WEEKDAYS[local.weekday()] in spec_time.weekdays
            if ok and spec_time.hours:
                start, end = spec_time.hours.split("-")
                ok = start <= local.strftime("%H:%M") < end
            return trace.record(path + ".time", ok, local.strftime("%a %H:%M"))

        return time_check
    return lambda facts, trace: trace.record(path + ".always", True)


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    predicate: Predicate


@dataclass(frozen=True)
class _AskModel:
    """A rules' decision the intent model is still to confirm or replace."""

    by_rules: Classification


def _with_safety_floor(decided: Classification) -> Classification:
    floor = SAFETY_PRIORITY.get(decided.action.category)
    if floor is None:
        return decided
    action = decided.action
    if PRIORITIES.index(action.priority) < PRIORITIES.index(floor) or not action.deliver:
        raised = max(action.priority, floor, key=PRIORITIES.index)
        action = action.model_copy(update={"priority": raised, "deliver": True})
        return replace(decided, action=action)
    return decided


@dataclass(frozen=True)
class RuleSet:
    """A validated, compiled rule set. `version` is the content hash stored with every decision."""

    version: str
    settings: RuleSettings
    rules: tuple[CompiledRule, ...]
    lists: Mapping[str, tuple[str, ...]]
    templates: frozenset[str]
    intent: TrainedIntent | None = None
    warnings: tuple[str, ...] = ()  # e.g. a template without a language the set offers: shown, not refused
    # the templates as validated with this set: replies render these, not a later edit that has not validated
    renderer: ReplyRenderer | None = None

    def is_served(self, address: str) -> bool:
        address = address.lower()
        domain = address.rpartition("@")[2]
        served = self.settings.served
        return address in {a.lower() for a in served.addresses} or any(
            domain_matches(domain, pattern) for pattern in served.domains
        )

    def is_own(self, address: str) -> bool:
        return self.is_served(address) or address.lower() in {a.lower() for a in self.settings.own_addresses}

    def classify(self, facts: MailFacts) -> Classification:
        """The category and action of a mail, with the safety floor applied (non-negotiable 5).

        The one place it is applied: the worker, explain, eval and replay all read this, so a rule file that
        gives `emergency` `priority: normal, deliver: false` shows the same urgent delivery everywhere.
        """
        return self.classify_many([facts])[0]

    def classify_many(self, batch: Sequence[MailFacts]) -> list[Classification]:
        """`classify` of each mail, with one call of the intent model for all of them (the n-gram features of a
        batch cost little more than those of one mail, and the embedding model takes every unsure mail at once)."""
        by_rules = [self._classify_by_rules_first(facts) for facts in batch]
        asking = [i for i, decided in enumerate(by_rules) if isinstance(decided, _AskModel)]
        if asking:
            assert self.intent is not None  # _AskModel is only returned when there is a model
            texts = [model_text(batch[i].mail) for i in asking]
            for i, result in zip(asking, self.intent.classifier.classify_many(texts), strict=True):
                pending = by_rules[i]
                assert isinstance(pending, _AskModel)
                by_rules[i] = self._with_model(pending.by_rules, result)
        return [_with_safety_floor(decided) for decided in by_rules if isinstance(decided, Classification)]

    def _classify_by_rules_first(self, facts: MailFacts) -> Classification | _AskModel:
        """Rules first (certain things: automated, partners, explicit rules); the catch-all asks the model.

        A rule-decided citizen category still yields to the model's safety layer; automated and partner
        decisions do not (the model never decides those).
        """
        by_rules = self.classify_by_rules(facts)
        if by_rules.action.category == AUTOMATED and not is_machine_report(facts.mail):
            # "automated" means no reply, not that nobody reads it: a contact form, a spam-filter false
            # positive or a forwarded bounce can carry a citizen's emergency (non-negotiable 5)
            return self._safety_in_automated(facts, by_rules) or by_rules
        if self.intent is None or by_rules.action.category in RULE_ONLY_CATEGORIES:
            return by_rules
        ruled = by_rules.action.category
        if not by_rules.rule.is_catch_all and not any(safety_outranks(a, ruled) for a in SAFETY_CATEGORIES):
            return by_rules  # an emergency rule: nothing outranks it, the model is not asked
        return _AskModel(by_rules)

    def _with_model(self, by_rules: Classification, result: IntentResult) -> Classification:
        is_catch_all = by_rules.rule.is_catch_all
        ruled = by_rules.action.category
        scores = result.scores.ranked[:5]
        if result.category is not None and (is_catch_all or safety_outranks(result.category, ruled)):
            action = self.settings.categories[result.category].action(result.category)
            return Classification(by_rules.rule, action, by_rules.trials, result.path, scores, result.escalated)
        if is_catch_all:
            return Classification(
                by_rules.rule, by_rules.action, by_rules.trials, "uncertain", scores, result.escalated
            )
        return Classification(by_rules.rule, by_rules.action, by_rules.trials, "rule", scores, result.escalated)

    def _safety_in_automated(self, facts: MailFacts, automated: Classification) -> Classification | None:
        """The first safety rule that matches the mail's own words.

        Rules only, not the model: on the 946 automated mails of the third-party corpus (bounces, auto-replies
        in English) the model ranked `objection` or `emergency` first 21 times, at up to 0.89.
        """
        for compiled in self.rules:
            if compiled.rule.then.category not in SAFETY_CATEGORIES:
                continue
            trace = Trace()
            if compiled.predicate(facts, trace):
                trials = (*automated.trials, RuleTrial(compiled.rule.id, True, tuple(trace.hits)))
                return Classification(compiled.rule, compiled.rule.then, trials)
        return None

    def warm_up(self) -> None:
        """Build what the first mail would otherwise pay for (the language detector's models, the model's first
        call), so a worker's first job is as fast as the others."""
        words = "Guten Tag, ich brauche bitte einen neuen Termin bei meiner Vermittlerin."
        mail = InboundMail(subject="Termin", body_text=words, own_text=words)
        self.classify(MailFacts.of(mail, "warm-up@example.org", (), datetime.now(UTC)))

    def classify_file_by_rules(self, mail: InboundMail) -> Classification:
        """The rules' decision for a mail read from a file, with the envelope `explain` assumes; no model."""
        from services.classify.envelope import assumed_envelope

        envelope = assumed_envelope(self, mail)
        return self.classify_by_rules(MailFacts.of(mail, envelope.mail_from, envelope.rcpt_tos, envelope.received_at))

    def certain_category(self, mail: InboundMail) -> str | None:
        """The category a rule other than the catch-all gives a mail, else None (left to the model)."""
        decided = self.classify_file_by_rules(mail)
        return None if decided.rule.is_catch_all else decided.action.category

    def classify_by_rules(self, facts: MailFacts) -> Classification:
        trials: list[RuleTrial] = []
        for compiled in self.rules:
            trace = Trace()
            matched = compiled.predicate(facts, trace)
            trials.append(RuleTrial(compiled.rule.id, matched, tuple(trace.hits)))
            if matched:
                return Classification(compiled.rule, compiled.rule.then, tuple(trials))
        # The loader refuses rule sets without a catch-all, so this is only reached by a broken invariant.
        raise LookupError("no rule matched and the rule set has no catch-all")

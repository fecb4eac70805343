"""Compiled rules and the first-match engine: keyword-indexed and untraced for the worker, traced for explain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from services.classify import conditions
from services.classify.candidates import RuleCandidates
from services.classify.conditions.addresses import domain_matches
from services.classify.conditions.base import Check, Hit, Trace
from services.classify.conditions.office_time import SETTINGS_HOLIDAYS
from services.classify.examples import AUTOMATED, RULE_ONLY_CATEGORIES
from services.classify.facts import MailFacts
from services.classify.features import model_text
from services.classify.keywords import KeywordIndex
from services.classify.schema import Action, Condition, Rule, RuleSettings
from services.domain import PRIORITY_ORDER, SAFETY_CATEGORIES, SAFETY_PRIORITY, SAFETY_WORDS_TAG, safety_outranks
from services.mail import InboundMail, is_machine_report, is_newsletter

if TYPE_CHECKING:
    from services.classify.hybrid import IntentResult
    from services.classify.training import TrainedIntent
    from services.reply.render import ReplyRenderer


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


def compile_condition(
    condition: Condition, lists: Mapping[str, tuple[str, ...]], index: KeywordIndex, path: str = "when"
) -> Check:
    """Turn a validated condition into a Check (see services.classify.conditions); lists are the named lists.

    Keyword lists join the rule set's one automaton: call index.build() once every rule is compiled.
    """
    return conditions.compile_condition(condition, lists, index, path)


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    check: Check


@dataclass(frozen=True)
class _AskModel:
    """A rules' decision the intent model is still to confirm or replace."""

    by_rules: Classification


def _with_safety_floor(decided: Classification) -> Classification:
    floor = SAFETY_PRIORITY.get(decided.action.category)
    if floor is None:
        return decided
    action = decided.action
    if PRIORITY_ORDER.index(action.priority) < PRIORITY_ORDER.index(floor) or not action.deliver:
        raised = max(action.priority, floor, key=PRIORITY_ORDER.index)
        action = action.model_copy(update={"priority": raised, "deliver": True})
        return replace(decided, action=action)
    return decided


def _newsletter_with_safety_words(automated: Classification, safety: Classification) -> Classification:
    """A newsletter about evictions or energy cut-offs is no citizen's emergency (all five held-out writers
    labelled theirs `automated`), but someone still reads it first: it stays `automated`, unanswered, and is
    delivered with the safety category's priority and a `safety-words:<category>` tag."""
    category = safety.action.category
    priorities = (automated.action.priority, safety.action.priority, SAFETY_PRIORITY[category])
    action = automated.action.model_copy(
        update={
            "priority": max(priorities, key=PRIORITY_ORDER.index),
            "deliver": True,
            "tags": [*automated.action.tags, f"{SAFETY_WORDS_TAG}:{category}"],
        }
    )
    return replace(automated, action=action, trials=safety.trials or automated.trials)


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
    # the automaton the rules' keywords were registered with; None: every rule is tried on every mail
    keywords: KeywordIndex | None = field(default=None, compare=False, repr=False)

    @cached_property
    def _candidates(self) -> RuleCandidates:
        indexed = self.keywords is not None
        requirements = [compiled.check.requires if indexed else None for compiled in self.rules]
        return RuleCandidates.of(requirements, self.keywords or KeywordIndex())

    def is_served(self, address: str) -> bool:
        address = address.lower()
        domain = address.rpartition("@")[2]
        served = self.settings.served
        return address in {a.lower() for a in served.addresses} or any(
            domain_matches(domain, pattern) for pattern in served.domains
        )

    def is_own(self, address: str) -> bool:
        return self.is_served(address) or address.lower() in {a.lower() for a in self.settings.own_addresses}

    def classify(self, facts: MailFacts, *, traced: bool = False) -> Classification:
        """The category and action of a mail, with the safety floor applied (non-negotiable 5).

        The one place it is applied: the worker, explain, eval and replay all read this, so a rule file that
        gives `emergency` `priority: normal, deliver: false` shows the same urgent delivery everywhere.
        `traced`: every rule tried, with each condition's hit or miss in `trials` (explain); else only the
        rules the keyword index leaves, without trials (the worker: the same decision, faster).
        """
        return self.classify_many([facts], traced=traced)[0]

    def classify_many(self, batch: Sequence[MailFacts], *, traced: bool = False) -> list[Classification]:
        """`classify` of each mail, with one call of the intent model for all of them (the n-gram features of a
        batch cost little more than those of one mail, and the embedding model takes every unsure mail at once)."""
        by_rules = [self._classify_by_rules_first(facts, traced) for facts in batch]
        asking = [i for i, decided in enumerate(by_rules) if isinstance(decided, _AskModel)]
        if asking:
            assert self.intent is not None  # _AskModel is only returned when there is a model
            texts = [model_text(batch[i].mail) for i in asking]
            for i, result in zip(asking, self.intent.classifier.classify_many(texts), strict=True):
                pending = by_rules[i]
                assert isinstance(pending, _AskModel)
                by_rules[i] = self._with_model(pending.by_rules, result)
        return [_with_safety_floor(decided) for decided in by_rules if isinstance(decided, Classification)]

    def _classify_by_rules_first(self, facts: MailFacts, traced: bool) -> Classification | _AskModel:
        """Rules first (certain things: automated, partners, explicit rules); the catch-all asks the model.

        A rule-decided citizen category still yields to the model's safety layer; automated and partner
        decisions do not (the model never decides those).
        """
        by_rules = self.classify_by_rules(facts, traced=traced)
        if by_rules.action.category == AUTOMATED and not is_machine_report(facts.mail):
            # "automated" means no reply, not that nobody reads it: a contact form, a spam-filter false
            # positive or a forwarded bounce can carry a citizen's emergency (non-negotiable 5)
            return self._safety_in_automated(facts, by_rules, traced) or by_rules
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

    def _safety_in_automated(self, facts: MailFacts, automated: Classification, traced: bool) -> Classification | None:
        """The first safety rule that matches the mail's own words; in a newsletter, its priority only.

        Rules only, not the model: on the 946 automated mails of the third-party corpus (bounces, auto-replies
        in English) the model ranked `objection` or `emergency` first 21 times, at up to 0.89.
        """
        matched: Classification | None = None
        if not traced:
            for compiled in self._tried(facts):
                if compiled.rule.then.category in SAFETY_CATEGORIES and compiled.check.test(facts):
                    matched = Classification(compiled.rule, compiled.rule.then, ())
                    break
        else:
            for compiled in self.rules:
                if compiled.rule.then.category not in SAFETY_CATEGORIES:
                    continue
                trace = Trace()
                if compiled.check.traced(facts, trace):
                    trials = (*automated.trials, RuleTrial(compiled.rule.id, True, tuple(trace.hits)))
                    matched = Classification(compiled.rule, compiled.rule.then, trials)
                    break
        if matched is None or not is_newsletter(facts.mail):
            return matched
        return _newsletter_with_safety_words(automated, matched)

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

    def classify_by_rules(self, facts: MailFacts, *, traced: bool = False) -> Classification:
        """The first rule that matches; `traced` tries every rule in order and records each one's trace."""
        if not traced:
            for compiled in self._tried(facts):
                if compiled.check.test(facts):
                    return Classification(compiled.rule, compiled.rule.then, ())
        else:
            trials: list[RuleTrial] = []
            for compiled in self.rules:
                trace = Trace()
                matched = compiled.check.traced(facts, trace)
                trials.append(RuleTrial(compiled.rule.id, matched, tuple(trace.hits)))
                if matched:
                    return Classification(compiled.rule, compiled.rule.then, tuple(trials))
        # The loader refuses rule sets without a catch-all, so this is only reached by a broken invariant.
        raise LookupError("no rule matched and the rule set has no catch-all")

    def _tried(self, facts: MailFacts) -> list[CompiledRule]:
        """The rules that can match the mail, in order: those whose required keywords occurred and the rest."""
        rules = self.rules
        return [rules[position] for position in self._candidates.for_mail(facts)]


__all__ = ["SETTINGS_HOLIDAYS", "Check", "Hit", "MailFacts", "Trace", "domain_matches"]

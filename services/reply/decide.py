"""The one decision core: a mail, its envelope, the rule set and the reply policy in, a Verdict out; pure."""

from __future__ import annotations

from collections.abc import Sequence

from services.classify.engine import Classification, MailFacts, RuleSet
from services.domain import DecisionPath, Envelope, Priority, Verdict
from services.mail import InboundMail
from services.pseudonym import pseudonymize
from services.reply.compose import threading_headers
from services.reply.policy import (
    PolicyConfig,
    domain_capped,
    reply_domain,
    reply_identity,
    sender_authentication,
    suppression_reason,
)

# what a verdict names when classification ran out of time: nothing was decided, so nothing is answered and a
# person reads the mail (non-negotiable 1)
TIMEOUT_DEFECT = "limit:classify-timeout"


def decide(
    mail: InboundMail,
    envelope: Envelope,
    ruleset: RuleSet,
    policy: PolicyConfig,
    identity_key: bytes,
    facts: MailFacts | None = None,
) -> Verdict:
    """What the worker does with a mail, without the store: category, channel, reply, priority, delivery.

    The worker, `rules explain`, `rules eval`, `replay`, `preview` and the workbench all call this, so they
    cannot disagree. Only the reply window and the daily caps are left to the store (`Verdict.with_allowance`).
    The clock is the envelope's arrival time (time conditions, and the office hours the reply will name);
    `identity_key` keys the sender pseudonyms; `facts` may be passed when the caller needs them too.
    """
    facts = facts or MailFacts.of(mail, envelope.mail_from, envelope.rcpt_tos, envelope.received_at)
    return verdict_of(ruleset.classify(facts), facts, envelope, ruleset, policy, identity_key)


def decide_many(
    items: Sequence[tuple[InboundMail, Envelope]],
    ruleset: RuleSet,
    policy: PolicyConfig,
    identity_key: bytes,
) -> list[Verdict]:
    """`decide` of each mail, with one call of the intent model for the whole batch (as the worker batches)."""
    facts = [MailFacts.of(mail, env.mail_from, env.rcpt_tos, env.received_at) for mail, env in items]
    classified = ruleset.classify_many(facts)
    return [
        verdict_of(classification, mail_facts, envelope, ruleset, policy, identity_key)
        for classification, mail_facts, (_mail, envelope) in zip(classified, facts, items, strict=True)
    ]


def verdict_of(
    classification: Classification,
    facts: MailFacts,
    envelope: Envelope,
    ruleset: RuleSet,
    policy: PolicyConfig,
    identity_key: bytes,
) -> Verdict:
    """The verdict of a classification already made (the safety floor is applied by `RuleSet.classify`)."""
    mail = facts.mail
    action = classification.action
    auth = sender_authentication(mail, policy)
    reason = suppression_reason(mail, envelope.mail_from, envelope.rcpt_tos, ruleset, policy, auth)
    sender_key = envelope.mail_from or mail.from_address
    domain_pseudonym = None
    if envelope.mail_from and domain_capped(auth, policy):
        domain_pseudonym = pseudonymize("@" + reply_domain(envelope.mail_from), identity_key)
    in_reply_to, references = threading_headers(mail)
    reply = action.reply is not None and reason is None
    reply_language = None
    if reply and action.reply is not None and ruleset.renderer is not None:
        reply_language = ruleset.renderer.reply_language(action.reply, facts.language, ruleset.settings)
    return Verdict(
        category=action.category,
        channel=action.channel,
        rule_id=classification.rule_id,
        ruleset_version=ruleset.version,
        template=action.reply,
        reply=reply,
        suppressed=reason,
        priority=action.priority,
        deliver_to=ruleset.settings.delivery_target(action),
        held=not action.deliver,
        language=facts.language,
        reply_language=reply_language,
        tags=tuple(action.tags),
        # a rule regex that ran out of time is flagged to staff like a parse limit (the pattern, not the text)
        defects=(*mail.defects, *(f"limit:regex-timeout {pattern[:60]}" for pattern in facts.timeouts)),
        path=classification.path,
        confidence=classification.confidence,
        scores=tuple(classification.scores[:3]),
        escalated=classification.escalated,
        sender_pseudonym=pseudonymize(reply_identity(sender_key), identity_key) if sender_key else None,
        domain_pseudonym=domain_pseudonym,
        in_reply_to=in_reply_to,
        references=references,
    )


def timed_out_verdict(ruleset: RuleSet, language: str = "de") -> Verdict:
    """The verdict of a mail whose classification hit the per-mail time limit: to staff, flagged, no reply."""
    catch_all = next(compiled.rule for compiled in ruleset.rules if compiled.rule.is_catch_all)
    return Verdict(
        category=catch_all.then.category,
        channel=catch_all.then.channel,
        rule_id=f"{DecisionPath.LIMIT}:{catch_all.then.category}",
        ruleset_version=ruleset.version,
        template=None,
        reply=False,
        suppressed="classify-timeout",
        priority=Priority.HIGH,  # nobody knows what it says: it may be an emergency, so a person looks soon
        deliver_to=ruleset.settings.delivery_target(catch_all.then.model_copy(update={"deliver": True})),
        held=False,
        language=language,
        defects=(TIMEOUT_DEFECT,),
        path=DecisionPath.LIMIT,
        confidence="low",
    )

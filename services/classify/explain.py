"""Explain one mail offline: category, channel, rule, reply or suppression reason, language and the full trace."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.classify.engine import MailFacts, RuleSet
from services.classify.features import model_text
from services.mail import InboundMail, parse_mail
from services.reply.policy import PolicyConfig, suppression_reason
from services.store.models import utcnow


def default_envelope(
    ruleset: RuleSet, mail: InboundMail, mail_from: str | None, rcpt_to: list[str] | None
) -> tuple[str, tuple[str, ...]]:
    """The envelope to assume for a file: the From header as sender, its served To/Cc as recipients."""
    sender = mail_from if mail_from is not None else mail.from_address
    recipients = (
        tuple(rcpt_to)
        if rcpt_to
        else tuple(a for a in (*mail.to_addresses, *mail.cc_addresses) if ruleset.is_served(a))
    )
    if not recipients and ruleset.settings.served.domains:
        recipients = (f"info@{ruleset.settings.served.domains[0].lstrip('*.')}",)
    return sender, recipients


def explain(
    ruleset: RuleSet,
    raw: bytes,
    *,
    mail_from: str | None = None,
    rcpt_to: list[str] | None = None,
    received_at: datetime | None = None,
    policy: PolicyConfig | None = None,
) -> dict[str, Any]:
    """The DESIGN.md explain contract: category, channel, rule, reply, suppressed, language, trace (+ extras)."""
    mail = parse_mail(raw)
    envelope_from, envelope_to = default_envelope(ruleset, mail, mail_from, rcpt_to)
    facts = MailFacts.of(mail, envelope_from, envelope_to, received_at or utcnow())
    language = facts.language
    result = ruleset.classify(facts)
    action = result.action
    reason = suppression_reason(mail, envelope_from, envelope_to, ruleset, policy or PolicyConfig())
    model: dict[str, Any] = {"path": result.path, "confidence": result.confidence, "escalated": result.escalated}
    model["scores"] = [{"category": c, "score": score} for c, score in result.scores[:3]]
    model["ngrams"], model["neighbours"] = [], []
    if ruleset.intent is not None and result.scores:
        fast = ruleset.intent.classifier.fast
        vector = fast.vectorize([model_text(mail)])
        model["ngrams"] = [{"ngram": g, "weight": w} for g, w in fast.weightiest(vector, result.scores[0][0])]
        model["neighbours"] = [
            {"file": n.file, "category": n.category, "similarity": n.similarity} for n in fast.neighbours(vector)
        ]
    return {
        "category": action.category,
        "channel": action.channel,
        "rule": result.rule_id,
        "reply": action.reply is not None and reason is None,
        "template": action.reply,
        "suppressed": reason,
        "language": language,
        "priority": action.priority,
        "deliver": True,  # held mail (deliver: false) goes to the postmaster target
        "held": not action.deliver,
        "deliver_to": ruleset.settings.delivery_target(action),
        "tags": list(action.tags),
        "automated_signals": list(mail.automated_signals),
        "defects": list(mail.defects),
        "ruleset_version": ruleset.version,
        **model,
        "trace": [
            {
                "rule": trial.rule_id,
                "matched": trial.matched,
                "conditions": [
                    {"condition": h.condition, "matched": h.matched, "detail": h.detail} for h in trial.hits
                ],
            }
            for trial in result.trials
        ],
    }


def format_explain(result: dict[str, Any]) -> str:
    lines = [
        f"category:   {result['category']}",
        f"channel:    {result['channel']}",
        f"rule:       {result['rule']}",
        f"reply:      {'yes (' + str(result['template']) + ')' if result['reply'] else 'no'}"
        + (f" - suppressed: {result['suppressed']}" if result["suppressed"] else ""),
        f"language:   {result['language']}",
        f"priority:   {result['priority']}",
        f"ruleset:    {result['ruleset_version']}",
        f"path:       {result['path']} (confidence {result['confidence']}"
        + (", embedding model asked" if result["escalated"] else "")
        + ")",
    ]
    if result["scores"]:
        lines.append("scores:     " + ", ".join(f"{s['category']} {s['score']:.2f}" for s in result["scores"]))
    if result["ngrams"]:
        lines.append("n-grams:    " + ", ".join(f"{g['ngram']!r} {g['weight']:+.2f}" for g in result["ngrams"]))
    for neighbour in result["neighbours"]:
        lines.append(f"similar:    {neighbour['file']} ({neighbour['category']}, {neighbour['similarity']:.2f})")
    lines.append("trace:")
    for trial in result["trace"]:
        lines.append(f"  {'MATCH' if trial['matched'] else 'miss '} {trial['rule']}")
        for condition in trial["conditions"]:
            mark = "+" if condition["matched"] else "-"
            detail = f"  ({condition['detail']})" if condition["detail"] else ""
            lines.append(f"      {mark} {condition['condition']}{detail}")
    return "\n".join(lines)

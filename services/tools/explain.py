"""Explain one mail offline: the worker's verdict, the rule trace, the model's scores, n-grams and nearest examples."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.classify.engine import MailFacts, RuleSet
from services.classify.envelope import assumed_envelope
from services.classify.features import model_text
from services.mail import parse_mail
from services.reply.decide import verdict_of
from services.reply.policy import PolicyConfig

# explain shows no pseudonyms, so any key does; it keeps `rules explain` free of the service's key file
_EXPLAIN_KEY = b"channelshift-explain"


def explain(
    ruleset: RuleSet,
    raw: bytes,
    *,
    mail_from: str | None = None,
    rcpt_to: list[str] | None = None,
    received_at: datetime | None = None,
    policy: PolicyConfig | None = None,
) -> dict[str, Any]:
    """The DESIGN.md explain contract (category, channel, rule, reply, suppressed, language, trace) and the
    rest of the worker's verdict, from the same `decide()`; plus the model's n-grams and nearest examples."""
    mail = parse_mail(raw)
    envelope = assumed_envelope(ruleset, mail, mail_from, rcpt_to, received_at)
    facts = MailFacts.of(mail, envelope.mail_from, envelope.rcpt_tos, envelope.received_at)
    classification = ruleset.classify(facts, traced=True)
    verdict = verdict_of(classification, facts, envelope, ruleset, policy or PolicyConfig(), _EXPLAIN_KEY)
    ngrams: list[dict[str, Any]] = []
    neighbours: list[dict[str, Any]] = []
    if ruleset.intent is not None and verdict.scores:
        fast = ruleset.intent.classifier.fast
        vector = fast.vectorize([model_text(mail)])
        ngrams = [{"ngram": g, "weight": w} for g, w in fast.weightiest(vector, verdict.scores[0][0])]
        neighbours = [
            {"file": n.file, "category": n.category, "similarity": n.similarity} for n in fast.neighbours(vector)
        ]
    return {
        **verdict.as_dict(),
        "rule": verdict.rule_id,
        "deliver": True,  # held mail (deliver: false) goes to the postmaster target
        "automated_signals": list(mail.automated_signals),
        "ngrams": ngrams,
        "neighbours": neighbours,
        "trace": [
            {
                "rule": trial.rule_id,
                "matched": trial.matched,
                "conditions": [
                    {"condition": h.condition, "matched": h.matched, "detail": h.detail} for h in trial.hits
                ],
            }
            for trial in classification.trials
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

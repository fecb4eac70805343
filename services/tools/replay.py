"""What-if replay: re-classify stored messages with a candidate rule set and count how decisions would shift."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from services.classify.engine import RuleSet
from services.domain import Envelope
from services.mail import parse_mail
from services.reply.decide import decide
from services.reply.policy import PolicyConfig
from services.store.replaying import decided_batches

BATCH = 500


@dataclass
class ReplayReport:
    candidate_version: str
    total: int = 0
    changed: int = 0
    purged: int = 0
    categories: Counter[tuple[str, str]] = field(default_factory=Counter)
    channels: Counter[tuple[str, str]] = field(default_factory=Counter)
    new_rules: Counter[str] = field(default_factory=Counter)
    changed_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate_version": self.candidate_version,
            "total": self.total,
            "changed": self.changed,
            "skipped_purged": self.purged,
            "category_shift": [
                {"from": old, "to": new, "count": n} for (old, new), n in sorted(self.categories.items()) if old != new
            ],
            "channel_shift": [
                {"from": old, "to": new, "count": n} for (old, new), n in sorted(self.channels.items()) if old != new
            ],
            "category_totals": self._totals(self.categories),
            "rules": dict(sorted(self.new_rules.items())),
            "changed_ids": self.changed_ids,
        }

    @staticmethod
    def _totals(pairs: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
        before: Counter[str] = Counter()
        after: Counter[str] = Counter()
        for (old, new), count in pairs.items():
            before[old] += count
            after[new] += count
        return {name: {"decided": before[name], "replayed": after[name]} for name in sorted(before | after)}

    def format(self) -> str:
        lines = [
            f"replayed {self.total} messages with rule set {self.candidate_version}: "
            f"{self.changed} would be decided differently"
            + (f" ({self.purged} skipped: raw message already purged)" if self.purged else ""),
            "",
            f"{'category':<22}{'decided':>9}{'replayed':>10}{'delta':>8}",
        ]
        for name, numbers in self._totals(self.categories).items():
            delta = numbers["replayed"] - numbers["decided"]
            lines.append(f"{name:<22}{numbers['decided']:>9}{numbers['replayed']:>10}{delta:>+8}")
        shifts = [(pair, n) for pair, n in sorted(self.categories.items()) if pair[0] != pair[1]]
        if shifts:
            lines += ["", "category moves:"] + [f"  {old} -> {new}: {n}" for (old, new), n in shifts]
        channel_shifts = [(pair, n) for pair, n in sorted(self.channels.items()) if pair[0] != pair[1]]
        if channel_shifts:
            lines += ["", "channel moves:"] + [f"  {old} -> {new}: {n}" for (old, new), n in channel_shifts]
        return "\n".join(lines)


# replay compares categories and channels, never pseudonyms: any key does
_REPLAY_KEY = b"channelshift-replay"


def replay(
    engine: Engine,
    ruleset: RuleSet,
    since: datetime,
    until: datetime | None = None,
    policy: PolicyConfig | None = None,
) -> ReplayReport:
    """Nothing is written or sent: the stored decisions stay as they are. Decides with the worker's `decide()`."""
    policy = policy or PolicyConfig()
    report = ReplayReport(candidate_version=ruleset.version)
    for rows in decided_batches(engine, since, until, BATCH):
        for message, decision in rows:
            if message.raw is None:
                report.purged += 1
                continue
            envelope = Envelope(message.mail_from, tuple(message.rcpt_tos), message.received_at)
            verdict = decide(parse_mail(message.raw), envelope, ruleset, policy, _REPLAY_KEY)
            report.total += 1
            report.categories[(decision.category, verdict.category)] += 1
            report.channels[(decision.channel, verdict.channel)] += 1
            report.new_rules[verdict.rule_id] += 1
            if (decision.category, decision.channel) != (verdict.category, verdict.channel):
                report.changed += 1
                report.changed_ids.append(message.id)
    return report

"""`rules eval`: accuracy, per-category precision/recall and a confusion matrix over a labelled folder."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.classify.engine import RuleSet
from services.classify.envelope import assumed_envelope
from services.mail import InboundMail, parse_mail
from services.reply.decide import decide
from services.reply.policy import PolicyConfig

SAFETY_CATEGORIES = ("emergency", "objection")


@dataclass
class EvalReport:
    total: int = 0
    correct: int = 0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[dict[str, str]] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    # (group kind, group value) -> [correct, total]; kinds: path, language, difficulty
    groups: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    rules_alone_correct: int = 0
    replies_to_automated: int = 0

    def count(self, kind: str, value: str, correct: bool) -> None:
        tally = self.groups.setdefault((kind, value or "-"), [0, 0])
        tally[0] += correct
        tally[1] += 1

    def false_alarms(self, category: str) -> int:
        return sum(n for (e, p), n in self.confusion.items() if p == category and e != category)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def categories(self) -> list[str]:
        return sorted({c for pair in self.confusion for c in pair})

    def per_category(self) -> dict[str, dict[str, float | int]]:
        out: dict[str, dict[str, float | int]] = {}
        for category in self.categories():
            tp = self.confusion[(category, category)]
            predicted = sum(n for (_e, p), n in self.confusion.items() if p == category)
            expected = sum(n for (e, _p), n in self.confusion.items() if e == category)
            out[category] = {
                "support": expected,
                "precision": tp / predicted if predicted else 0.0,
                "recall": tp / expected if expected else 0.0,
            }
        return out

    def missed_safety(self) -> list[dict[str, str]]:
        return [m for m in self.misses if m["expected"] in SAFETY_CATEGORIES]

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "correct": self.correct,
            "accuracy": round(self.accuracy, 4),
            "per_category": self.per_category(),
            "confusion": [{"expected": e, "predicted": p, "count": n} for (e, p), n in sorted(self.confusion.items())],
            "misses": self.misses,
            "missed_safety": self.missed_safety(),
            "missing_files": self.missing_files,
            "rules_alone_accuracy": round(self.rules_alone_correct / self.total, 4) if self.total else 0.0,
            "false_emergencies": self.false_alarms("emergency"),
            "replies_to_automated": self.replies_to_automated,
            "groups": [
                {"by": kind, "value": value, "correct": c, "total": n, "accuracy": round(c / n, 4)}
                for (kind, value), (c, n) in sorted(self.groups.items())
            ],
        }

    def format(self) -> str:
        lines = [
            f"accuracy: {self.correct}/{self.total} = {self.accuracy:.1%}",
            "",
            f"{'category':<20}{'support':>8}{'precision':>11}{'recall':>8}",
        ]
        for category, stats in self.per_category().items():
            lines.append(f"{category:<20}{stats['support']:>8}{stats['precision']:>11.2f}{stats['recall']:>8.2f}")
        categories = self.categories()
        short = [c[:6] for c in categories]
        lines += ["", "confusion (rows expected, columns predicted):", " " * 20 + "".join(f"{s:>7}" for s in short)]
        for expected in categories:
            lines.append(f"{expected:<20}" + "".join(f"{self.confusion[(expected, p)] or '.':>7}" for p in categories))
        if self.misses:
            lines += ["", "misclassified:"]
            lines += [
                f"  {m['file']}: expected {m['expected']}, got {m['predicted']} (rule {m['rule']})" for m in self.misses
            ]
        if self.missing_files:
            lines += ["", "listed in labels.csv but missing: " + ", ".join(self.missing_files)]
        if self.total:
            lines += [
                "",
                f"rules alone (no model): {self.rules_alone_correct}/{self.total} = "
                f"{self.rules_alone_correct / self.total:.1%}",
                f"false emergencies: {self.false_alarms('emergency')}; replies to automated mail: "
                f"{self.replies_to_automated}",
            ]
        for kind in ("path", "language", "difficulty"):
            rows = [(value, tally) for (k, value), tally in sorted(self.groups.items()) if k == kind]
            if rows:
                lines += ["", f"by {kind}:"]
                lines += [f"  {value:<18}{c:>5}/{n:<5}{c / n:>8.1%}" for value, (c, n) in rows]
        return "\n".join(lines)


def rules_alone(ruleset: RuleSet, mail: InboundMail) -> str:
    """The category the rule files give without the model (for the side-by-side in the report)."""
    return ruleset.classify_file_by_rules(mail).action.category


# eval shows no pseudonyms: any key does
_EVAL_KEY = b"channelshift-eval"


def evaluate(ruleset: RuleSet, directory: Path, labels_file: Path | None = None) -> EvalReport:
    labels_path = labels_file or directory / "labels.csv"
    report = EvalReport()
    with open(labels_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            path = directory / row["file"]
            if not path.is_file():
                report.missing_files.append(row["file"])
                continue
            raw = path.read_bytes()
            mail = parse_mail(raw)
            verdict = decide(mail, assumed_envelope(ruleset, mail), ruleset, PolicyConfig(), _EVAL_KEY)
            expected, predicted = row["category"].strip(), verdict.category
            report.total += 1
            report.confusion[(expected, predicted)] += 1
            hit = expected == predicted
            report.count("path", verdict.path, hit)
            report.count("language", (row.get("language") or "").strip(), hit)
            report.count("difficulty", (row.get("difficulty") or "").strip(), hit)
            report.rules_alone_correct += rules_alone(ruleset, mail) == expected
            report.replies_to_automated += expected == "automated" and verdict.reply
            if hit:
                report.correct += 1
            else:
                report.misses.append(
                    {"file": row["file"], "expected": expected, "predicted": predicted, "rule": verdict.rule_id}
                )
    return report

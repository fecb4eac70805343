"""Classification speed: mails/s on one core for the shipped rule set, and scaling from 10 to 1,000 rules.

.venv/bin/python bench/bench_classify.py [--corpus ../shared/corpus/citizen-mails]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ROOT, save

from services.classify.engine import MailFacts
from services.classify.language import detect_language
from services.classify.loader import load_rules
from services.mail import parse_mail
from services.store.models import utcnow

WORDS = [
    "antrag",
    "bescheid",
    "termin",
    "unterlagen",
    "zahlung",
    "wohnung",
    "arbeit",
    "kinder",
    "schule",
    "miete",
    "konto",
    "krank",
    "kurs",
    "frage",
    "brief",
    "formular",
    "portal",
    "geld",
    "auto",
    "strom",
]


def timed(function, items, repeat: int) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    for _ in range(repeat):
        for item in items:
            function(item)
    return (time.process_time() - start) / (repeat * len(items))


def synthetic_rules(directory: Path, count: int) -> None:
    rng = random.Random(count)
    lines = ["rules:"]
    for index in range(count):
        keywords = ", ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99999)}" for _ in range(12))
        lines += [
            f"  - id: synthetic-{index}",
            "    when:",
            f"      text: {{keywords: [{keywords}]}}",
            "    then: {category: general, channel: overview, reply: general}",
        ]
    (directory / "45-synthetic.yaml").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "corpus" / "citizen-mails"))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    raws = [p.read_bytes() for p in sorted(Path(args.corpus).glob("*.eml"))]
    if not raws:
        raws = [p.read_bytes() for p in sorted((ROOT / "routing_rules" / "tests").glob("*.eml"))]
    ruleset = load_rules(ROOT / "routing_rules", ROOT / "templates")
    mails = [parse_mail(raw) for raw in raws]
    languages = [detect_language(m.subject + "\n" + m.own_text) for m in mails]
    facts = [
        MailFacts.build(m, m.from_address, ("info@jobcenter-musterstadt.example",), lang, utcnow())
        for m, lang in zip(mails, languages, strict=True)
    ]

    parse_s = timed(parse_mail, raws, args.repeat)
    language_s = timed(lambda m: detect_language(m.subject + "\n" + m.own_text), mails, max(1, args.repeat // 4))
    rules_s = timed(ruleset.classify, facts, args.repeat)
    total = parse_s + language_s + rules_s
    shipped = {
        "mails": len(raws),
        "rules": len(ruleset.rules),
        "parse_per_s": round(1 / parse_s),
        "language_per_s": round(1 / language_s),
        "rules_per_s": round(1 / rules_s),
        "pipeline_per_s": round(1 / total),
    }
    print(f"shipped rule set ({len(ruleset.rules)} rules) on {len(raws)} mails, one core:")
    print(
        f"  parse {shipped['parse_per_s']}/s  language {shipped['language_per_s']}/s  "
        f"rules {shipped['rules_per_s']}/s  all three {shipped['pipeline_per_s']}/s"
    )

    scaling = []
    for count in (10, 100, 1000):
        work = Path(tempfile.mkdtemp())
        shutil.copytree(ROOT / "routing_rules", work / "rules", ignore=shutil.ignore_patterns("tests"))
        synthetic_rules(work / "rules", count)
        candidate = load_rules(work / "rules", ROOT / "templates")
        # the synthetic rules come before the citizen rules, so every mail is checked against all of them
        per_mail = timed(candidate.classify, facts, max(2, args.repeat // 4))
        scaling.append(
            {"extra_rules": count, "rules_per_s": round(1 / per_mail), "us_per_mail": round(per_mail * 1e6, 1)}
        )
        shutil.rmtree(work)
    base = scaling[0]["us_per_mail"]
    for row in scaling:
        row["cost_vs_10"] = round(row["us_per_mail"] / base, 2)
        print(
            f"  +{row['extra_rules']:>4} rules: {row['rules_per_s']:>7}/s ({row['us_per_mail']} us/mail, "
            f"{row['cost_vs_10']}x the 10-rule cost)"
        )
    print(save("classify", {"shipped": shipped, "scaling": scaling}))


if __name__ == "__main__":
    main()

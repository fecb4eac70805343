"""Classification speed on one core: the fast path (parse, language, rules, n-gram model), the embedding model's
share and cost, model load time and memory, and rule matching from 10 to 1,000 extra rules.

.venv/bin/python bench/bench_classify.py [--corpus tests/data/eval-split]
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

import resource

from common import ROOT, save

from services.classify.embedding import embed
from services.classify.engine import MailFacts
from services.classify.features import model_text, own_part
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
    parser.add_argument("--corpus", default=str(ROOT / "tests" / "data" / "eval-split"))
    parser.add_argument("--batch", type=int, default=20, help="mails per model call, as the worker batches")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    raws = [p.read_bytes() for p in sorted(Path(args.corpus).glob("*.eml"))]
    if not raws:
        raws = [p.read_bytes() for p in sorted((ROOT / "routing_rules" / "tests").glob("*.eml"))]
    cache = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    ruleset = load_rules(ROOT / "routing_rules", ROOT / "templates", cache_dir=cache)
    cold_load_s = time.perf_counter() - started
    from services.classify import training

    training._models.clear()  # the second load reads the model cache, as every later process start does
    started = time.perf_counter()
    ruleset = load_rules(ROOT / "routing_rules", ROOT / "templates", cache_dir=cache)
    warm_load_s = time.perf_counter() - started
    assert ruleset.intent is not None
    classifier = ruleset.intent.classifier
    mails = [parse_mail(raw) for raw in raws]
    languages = [detect_language(m.subject + "\n" + m.own_text) for m in mails]
    facts = [
        MailFacts.build(m, m.from_address, ("info@jobcenter-musterstadt.example",), lang, utcnow())
        for m, lang in zip(mails, languages, strict=True)
    ]

    parse_s = timed(parse_mail, raws, args.repeat)
    language_s = timed(lambda m: detect_language(m.subject + "\n" + m.own_text), mails, max(1, args.repeat // 4))
    rules_s = timed(ruleset.classify_by_rules, facts, args.repeat)
    texts = [model_text(m) for m in mails]
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    features_s = timed(model_text, mails, args.repeat)
    fast_s = timed(classifier.fast.scores_many, batches, max(1, args.repeat // 4)) / args.batch
    escalated = [
        t
        for t, scores in zip(texts, classifier.fast.scores_many(texts), strict=True)
        if classifier.needs_semantic(scores)
    ]
    sample = escalated[: min(60, len(escalated))]
    started = time.process_time()
    embed([own_part(t) for t in sample])
    embed_s = (time.process_time() - started) / max(1, len(sample))
    share = len(escalated) / len(texts)
    fast_path = parse_s + language_s + rules_s + features_s + fast_s
    mean_s = fast_path + share * embed_s
    shipped = {
        "mails": len(raws),
        "rules": len(ruleset.rules),
        "parse_per_s": round(1 / parse_s),
        "language_per_s": round(1 / language_s),
        "rules_per_s": round(1 / rules_s),
        "model_features_per_s": round(1 / features_s),
        "ngram_model_per_s": round(1 / fast_s),
        "fast_path_per_s": round(1 / fast_path),
        "escalated_share": round(share, 3),
        "embedding_ms_per_escalated_mail": round(embed_s * 1000, 1),
        "mean_ms_per_mail_with_escalations": round(mean_s * 1000, 2),
        "mean_per_s_with_escalations": round(1 / mean_s),
        "model_load_cold_s": round(cold_load_s, 1),
        "model_load_cached_s": round(warm_load_s, 2),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(f"shipped rule set ({len(ruleset.rules)} rules + model) on {len(raws)} mails, one core:")
    for key, value in shipped.items():
        print(f"  {key:<36}{value}")

    scaling = []
    for count in (10, 100, 1000):
        work = Path(tempfile.mkdtemp())
        shutil.copytree(ROOT / "routing_rules", work / "rules", ignore=shutil.ignore_patterns("tests", "examples"))
        synthetic_rules(work / "rules", count)
        candidate = load_rules(
            work / "rules", ROOT / "templates", with_model=False, examples_dir=ROOT / "routing_rules" / "examples"
        )
        # the synthetic rules come before the catch-all, so every mail is checked against all of them
        per_mail = timed(candidate.classify_by_rules, facts, max(2, args.repeat // 4))
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

"""Classification speed on one core: the fast path (parse, language, rules, n-gram model), the embedding model's
share and cost, model load time and memory, and rule matching from 10 to 1,000 extra rules.

With --against TREE (a checkout of an earlier commit with its own .venv) the same measurement runs in child
processes alternately on this tree and on TREE, and the figures are reported as ratios.

.venv/bin/python bench/bench_classify.py [--corpus tests/data/eval-split] [--against /tmp/base] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORDS = [
    "antrag", "bescheid", "termin", "unterlagen", "zahlung", "wohnung", "arbeit", "kinder", "schule", "miete",
    "konto", "krank", "kurs", "frage", "brief", "formular", "portal", "geld", "auto", "strom",
]  # fmt: skip
ENVELOPE_TO = ("info@jobcenter-musterstadt.example",)


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


def measure(tree: Path, corpus: Path, cache: Path, batch: int, repeat: int) -> dict[str, Any]:
    """Runs in a child whose `services` is the tree's: every stage, and the whole fast path as the worker would
    call it (RuleSet.classify_many over batches where the tree has it, RuleSet.classify per mail where not)."""
    started = time.perf_counter()
    from services.classify.engine import MailFacts
    from services.classify.features import model_text
    from services.classify.hybrid import should_escalate
    from services.classify.language import detect_language
    from services.mail import parse_mail

    try:
        from services.ruleset.loader import load_rules
    except ImportError:  # a baseline tree from before services/ruleset/
        from services.classify.loader import load_rules  # type: ignore[no-redef]
    from services.store.models import utcnow

    assert Path(sys.modules["services"].__file__ or "").resolve().is_relative_to(tree.resolve()), "wrong tree"
    ruleset = load_rules(tree / "routing_rules", tree / "templates", cache_dir=cache)
    load_s = time.perf_counter() - started
    assert ruleset.intent is not None
    fast = ruleset.intent.classifier.fast
    raws = [p.read_bytes() for p in sorted(corpus.glob("*.eml"))]
    mails = [parse_mail(raw) for raw in raws]
    now = utcnow()
    facts = [MailFacts.of(m, m.from_address, ENVELOPE_TO, now) for m in mails]
    texts = [model_text(m) for m in mails]
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    own = [m.subject + "\n" + m.own_text for m in mails]
    build = MailFacts.build
    stages = {
        "parse": timed(parse_mail, raws, repeat),
        "language": timed(detect_language, own, max(1, repeat // 2)),
        "facts": timed(lambda m: build(m, m.from_address, ENVELOPE_TO, "de", now), mails, repeat),
        "rules": timed(ruleset.classify_by_rules, facts, repeat),
        "model_text": timed(model_text, mails, repeat),
        "vectorize": timed(fast.vectorize, batches, repeat) / batch,
        "ngram_model": timed(fast.scores_many, batches, repeat) / batch,
        "ngram_model_one_mail": timed(fast.scores, texts, max(1, repeat // 2)),
    }
    classify_many = getattr(ruleset, "classify_many", None)

    def whole(pair: tuple[list[bytes], list[Any]]) -> None:
        chunk, _ = pair
        parsed = [parse_mail(raw) for raw in chunk]
        found = [MailFacts.of(m, m.from_address, ENVELOPE_TO, now) for m in parsed]
        if classify_many is not None:
            classify_many(found)
        else:
            for one in found:
                ruleset.classify(one)

    raw_batches = [(raws[i : i + batch], []) for i in range(0, len(raws), batch)]
    os.environ["CHANNELSHIFT_EMBEDDINGS"] = "off"  # the fast path alone; escalations are counted below
    stages["fast_path"] = timed(whole, raw_batches, max(1, repeat // 2)) / batch
    settings = ruleset.intent.classifier.settings
    escalated = [scores for scores in fast.scores_many(texts) if should_escalate(scores, settings)]
    return {
        "tree": str(tree),
        "mails": len(raws),
        "load_cached_s": round(load_s, 2),
        "us_per_mail": {name: round(seconds * 1e6, 1) for name, seconds in stages.items()},
        "escalated_share": round(len(escalated) / len(texts), 3),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def embedding_cost(corpus: Path, cache: Path) -> float:
    """CPU seconds of the embedding model per escalated mail (this tree; the model is the same in both)."""
    from services.classify.embedding import embed
    from services.classify.features import model_text, own_part
    from services.classify.hybrid import should_escalate
    from services.mail import parse_mail

    try:
        from services.ruleset.loader import load_rules
    except ImportError:  # a baseline tree from before services/ruleset/
        from services.classify.loader import load_rules  # type: ignore[no-redef]

    ruleset = load_rules(ROOT / "routing_rules", ROOT / "templates", cache_dir=cache)
    assert ruleset.intent is not None
    classifier = ruleset.intent.classifier
    texts = [model_text(parse_mail(p.read_bytes())) for p in sorted(corpus.glob("*.eml"))]
    scores = classifier.fast.scores_many(texts)
    sample = [own_part(t) for t, s in zip(texts, scores, strict=True) if should_escalate(s, classifier.settings)][:60]
    embed(sample[:2])
    started = time.process_time()
    embed(sample)
    return (time.process_time() - started) / max(1, len(sample))


def scaling(facts_corpus: Path, repeat: int) -> list[dict[str, Any]]:
    from services.classify.engine import MailFacts
    from services.mail import parse_mail

    try:
        from services.ruleset.loader import load_rules
    except ImportError:  # a baseline tree from before services/ruleset/
        from services.classify.loader import load_rules  # type: ignore[no-redef]
    from services.store.models import utcnow

    mails = [parse_mail(p.read_bytes()) for p in sorted(facts_corpus.glob("*.eml"))]
    now = utcnow()
    facts = [MailFacts.of(m, m.from_address, ENVELOPE_TO, now) for m in mails]
    rows: list[dict[str, Any]] = []
    for count in (0, 10, 100, 1000):
        work = Path(tempfile.mkdtemp())
        shutil.copytree(ROOT / "routing_rules", work / "rules", ignore=shutil.ignore_patterns("tests", "examples"))
        if count:
            synthetic_rules(work / "rules", count)
        candidate = load_rules(
            work / "rules", ROOT / "templates", with_model=False, examples_dir=ROOT / "routing_rules" / "examples"
        )
        # the synthetic rules come before the catch-all, so every mail is checked against all of them
        per_mail = timed(candidate.classify_by_rules, facts, max(2, repeat // 4))
        rows.append({"extra_rules": count, "rules_per_s": round(1 / per_mail), "us_per_mail": round(per_mail * 1e6, 1)})
        shutil.rmtree(work)
    for row in rows:
        row["cost_vs_shipped"] = round(row["us_per_mail"] / rows[0]["us_per_mail"], 2)
        row["cost_vs_10"] = round(row["us_per_mail"] / rows[1]["us_per_mail"], 2)
    return rows


def child(tree: Path, mode: str, corpus: Path, cache: Path, batch: int, repeat: int) -> dict[str, Any]:
    """Run one measurement in a fresh process on `tree` (its own .venv if it has one, its code first on the path)."""
    own_python = tree / ".venv" / "bin" / "python"
    python = str(own_python) if own_python.exists() else sys.executable
    env = {**os.environ, "PYTHONPATH": str(tree), "CHANNELSHIFT_LOG_LEVEL": "WARNING"}
    args = [python, str(Path(__file__).resolve()), "--child", mode, "--tree", str(tree), "--corpus", str(corpus)]
    args += ["--cache", str(cache), "--batch", str(batch), "--repeat", str(repeat)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=tree)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=ROOT / "tests" / "data" / "eval-split")
    parser.add_argument("--batch", type=int, default=20, help="mails per classify_many / model call")
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", type=Path, help="a checkout of the baseline commit, measured alternately")
    parser.add_argument("--child", choices=["cold", "measure", "embedding", "scaling"])
    parser.add_argument("--tree", type=Path, default=ROOT)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.tree))
        if args.child == "cold":
            started = time.perf_counter()
            try:
                from services.ruleset.loader import load_rules
            except ImportError:  # a baseline tree from before services/ruleset/
                from services.classify.loader import load_rules  # type: ignore[no-redef]

            load_rules(args.tree / "routing_rules", args.tree / "templates", cache_dir=args.cache)
            out: Any = {"load_cold_s": round(time.perf_counter() - started, 1)}
        elif args.child == "measure":
            out = measure(args.tree, args.corpus, args.cache, args.batch, args.repeat)
        elif args.child == "embedding":
            out = {"embedding_s": embedding_cost(args.corpus, args.cache)}
        else:
            out = scaling(args.corpus, args.repeat)
        print(json.dumps(out))
        return

    trees = {"now": ROOT} | ({"base": args.against} if args.against else {})
    caches = {name: Path(tempfile.mkdtemp()) for name in trees}
    cold = {
        name: child(tree, "cold", args.corpus, caches[name], args.batch, args.repeat) for name, tree in trees.items()
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            runs[name].append(child(tree, "measure", args.corpus, caches[name], args.batch, args.repeat))
            print(f"round {round_ + 1} {name}: fast path {runs[name][-1]['us_per_mail']['fast_path']} us/mail")
    embedding_s = child(ROOT, "embedding", args.corpus, caches["now"], args.batch, args.repeat)["embedding_s"]
    rows = child(ROOT, "scaling", args.corpus, caches["now"], args.batch, args.repeat)
    base_rows = []
    if args.against:
        base_rows = child(args.against, "scaling", args.corpus, caches["base"], args.batch, args.repeat)

    summary: dict[str, Any] = {}
    for name in trees:
        stages = {
            stage: statistics.median(r["us_per_mail"][stage] for r in runs[name])
            for stage in runs[name][0]["us_per_mail"]
        }
        share = runs[name][0]["escalated_share"]
        mean_us = stages["fast_path"] + share * embedding_s * 1e6
        summary[name] = {
            "us_per_mail": stages,
            "fast_path_per_s": round(1e6 / stages["fast_path"]),
            "escalated_share": share,
            "embedding_ms_per_escalated_mail": round(embedding_s * 1000, 1),
            "mean_ms_per_mail_with_escalations": round(mean_us / 1000, 2),
            "mean_per_s_with_escalations": round(1e6 / mean_us, 1),
            "model_load_cold_s": cold[name]["load_cold_s"],
            "model_load_cached_s": statistics.median(r["load_cached_s"] for r in runs[name]),
            "max_rss_mib": statistics.median(r["max_rss_mib"] for r in runs[name]),
        }
    for name, figures in summary.items():
        print(f"{name} ({trees[name]}), {runs[name][0]['mails']} mails, one core, median of {args.rounds} rounds:")
        for key, value in figures.items():
            print(f"  {key:<36}{value}")
    if "base" in summary:
        now, base = summary["now"]["us_per_mail"], summary["base"]["us_per_mail"]
        summary["ratio"] = {stage: round(base[stage] / now[stage], 2) for stage in now}
        print("speed-up against the baseline (its time / ours):", summary["ratio"])
    for name, scaled in (("now", rows), ("base", base_rows)):
        for row in scaled:
            cost = f"{row['us_per_mail']} us/mail, {row['cost_vs_shipped']}x the shipped set, {row['cost_vs_10']}x +10"
            print(f"  {name} +{row['extra_rules']:>4} rules: {row['rules_per_s']:>7}/s ({cost})")
    from common import save

    print(save("classify", {"against": str(args.against) if args.against else None, "summary": summary,
                            "rounds": runs, "scaling": rows, "scaling_base": base_rows}))  # fmt: skip
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()

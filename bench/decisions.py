"""Per-mail decisions (category, channel, rule, path, language, escalation, scores) of a tree, to diff two trees.

A speed change must not change what is decided: run this with the old tree's and the new tree's venv and
compare the two files (`--compare OLD NEW`). Only file names and decisions are written, never mail content.

.venv/bin/python bench/decisions.py --out /tmp/new.json [DIR ...]
.venv/bin/python bench/decisions.py --compare /tmp/old.json /tmp/new.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DIRS = [
    ROOT / "tests" / "data" / "eval-split",
    ROOT / "routing_rules" / "tests",
    Path(os.environ.get("CHANNELSHIFT_CORPUS_DIR", "/work/shared/corpus")) / "citizen-mails",
]
# a fixed time, so that time-of-day rules decide the same in both runs
RECEIVED_AT = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)


def decisions(directories: list[Path], cache_dir: Path) -> dict[str, dict[str, Any]]:
    from services.classify.engine import MailFacts

    try:
        from services.classify.envelope import assumed_envelope

        def default_envelope(ruleset: Any, mail: Any, _from: None, _to: None) -> tuple[str, tuple[str, ...]]:
            envelope = assumed_envelope(ruleset, mail)
            return envelope.mail_from, envelope.rcpt_tos
    except ImportError:  # a baseline tree from before services/classify/envelope.py
        from services.classify.explain import default_envelope  # type: ignore[no-redef]
    from services.mail import parse_mail

    try:
        from services.ruleset.loader import load_rules
    except ImportError:  # a baseline tree from before services/ruleset/
        from services.classify.loader import load_rules  # type: ignore[no-redef]

    ruleset = load_rules(ROOT / "routing_rules", ROOT / "templates", cache_dir=cache_dir)
    found: dict[str, dict[str, Any]] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.eml")):
            mail = parse_mail(path.read_bytes())
            sender, recipients = default_envelope(ruleset, mail, None, None)
            facts = MailFacts.of(mail, sender, recipients, RECEIVED_AT)
            result = ruleset.classify(facts)
            found[f"{directory.name}/{path.name}"] = {
                "category": result.action.category,
                "channel": result.action.channel,
                "rule": result.rule_id,
                "path": result.path,
                "language": facts.language,
                "escalated": result.escalated,
                "scores": [[name, score] for name, score in result.scores],
            }
    return found


def compare(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> int:
    """Print every mail whose decision differs, per field; the exit status is the number of such mails."""
    differing = 0
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name, {}), new.get(name, {})
        fields = [key for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]
        if fields:
            differing += 1
            print(name, "; ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in fields))
    print(f"{len(new)} mails, {differing} differ")
    return min(differing, 125)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directories", nargs="*", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", type=Path, help="model cache directory (default: a fresh temporary one)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(path.read_text()) for path in args.compare)
        sys.exit(compare(old, new))
    cache = args.cache or Path(tempfile.mkdtemp())
    found = decisions(args.directories or DEFAULT_DIRS, cache)
    text = json.dumps(found, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()

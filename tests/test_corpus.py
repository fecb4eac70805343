"""The shared corpus: labelled citizen mails (accuracy gate) and real third-party bounces / broken MIME."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

from services.config import PROJECT_ROOT
from services.mail import parse_mail
from services.reply.policy import PolicyConfig
from services.ruleset.loader import load_rules
from services.tools.evaluate import evaluate
from services.tools.explain import explain
from tests.support import envelope_sender_of

RULESET = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates")
CORPUS_MX = "mx01.jobcenter-musterstadt.example"  # the authserv-id the citizen mails' Authentication-Results carry
_SKIP = re.compile(r"(LICENSE|COPYING|SOURCE_COMMIT|README|INDEX)|\.(ref|md|rst|json)$")


def _thirdparty_files(corpus: Path) -> list[Path]:
    return sorted(p for p in (corpus / "thirdparty").rglob("*") if p.is_file() and not _SKIP.search(p.name))


def test_rule_set_accuracy_on_labelled_citizen_mails(corpus_dir: Path) -> None:
    report = evaluate(RULESET, corpus_dir / "citizen-mails")
    print(report.format())
    assert report.total == 130 and not report.missing_files
    assert report.accuracy >= 0.95
    assert report.missed_safety() == []


def test_reply_expected_column_matches(corpus_dir: Path) -> None:
    directory = corpus_dir / "citizen-mails"
    with open(directory / "labels.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    wrong = []
    for row in rows:
        result = explain(RULESET, (directory / row["file"]).read_bytes())
        if result["reply"] != (row["reply_expected"] == "yes"):
            wrong.append((row["file"], result["suppressed"]))
        if row["category"] == "automated":
            assert result["reply"] is False
    assert wrong == []


def test_language_detection_on_labelled_mails(corpus_dir: Path) -> None:
    directory = corpus_dir / "citizen-mails"
    with open(directory / "labels.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    hits = sum(explain(RULESET, (directory / r["file"]).read_bytes())["language"] == r["language"] for r in rows)
    assert hits / len(rows) >= 0.95


def test_thirdparty_never_gets_a_reply_and_never_crashes(corpus_dir: Path) -> None:
    files = _thirdparty_files(corpus_dir)
    assert len(files) > 1000
    per_folder: Counter[str] = Counter()
    replied = []
    for path in files:
        raw = path.read_bytes()
        result = explain(
            RULESET, raw, mail_from=envelope_sender_of(raw), rcpt_to=["info@jobcenter-musterstadt.example"]
        )
        per_folder[path.relative_to(corpus_dir / "thirdparty").parts[0]] += 1
        if result["reply"]:
            replied.append(str(path.relative_to(corpus_dir)))
    print(dict(per_folder))
    assert replied == []


@pytest.mark.parametrize("folder", ["citizen-mails", "thirdparty"])
def test_parser_never_raises(corpus_dir: Path, folder: str) -> None:
    for path in sorted((corpus_dir / folder).rglob("*")):
        if path.is_file():
            mail = parse_mail(path.read_bytes())
            assert isinstance(mail.own_text, str)


@pytest.mark.parametrize("mode", ["not-failed", "aligned"])
def test_trusting_the_mx_costs_no_citizen_its_reply(corpus_dir: Path, mode: str) -> None:
    """With the corpus MX's results believed, every citizen mail that is answered without them still is."""
    directory = corpus_dir / "citizen-mails"
    with open(directory / "labels.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    policy = PolicyConfig(trusted_authserv_ids=(CORPUS_MX,), reply_auth=mode)  # type: ignore[arg-type]
    lost = []
    for row in rows:
        raw = (directory / row["file"]).read_bytes()
        if explain(RULESET, raw)["reply"] and not (result := explain(RULESET, raw, policy=policy))["reply"]:
            lost.append((row["file"], result["suppressed"]))
    assert sum(row["reply_expected"] == "yes" for row in rows) == 110
    assert lost == []


def test_thirdparty_stays_unanswered_with_authentication_on(corpus_dir: Path) -> None:
    policy = PolicyConfig(trusted_authserv_ids=("mx.google.com", CORPUS_MX), reply_auth="not-failed")
    replied = []
    for path in _thirdparty_files(corpus_dir):
        raw = path.read_bytes()
        result = explain(
            RULESET,
            raw,
            mail_from=envelope_sender_of(raw),
            rcpt_to=["info@jobcenter-musterstadt.example"],
            policy=policy,
        )
        if result["reply"]:
            replied.append(str(path.relative_to(corpus_dir)))
    assert replied == []

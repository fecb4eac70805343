"""The worker's keyword-indexed, untraced rule path decides every mail exactly as explain's traced path does."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.classify.conditions.addresses import DomainPatterns, domain_matches
from services.classify.engine import Classification, MailFacts, RuleSet
from services.classify.envelope import assumed_envelope
from services.config import PROJECT_ROOT
from services.domain import Verdict
from services.mail import InboundMail, parse_mail
from services.reply.decide import verdict_of
from services.reply.policy import PolicyConfig
from services.ruleset.loader import load_rules

# a fixed arrival time (a Wednesday morning in Berlin), so time conditions decide the same in both paths
RECEIVED_AT = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
BATCH = 40
# rules of every shape the index reasons about, on words the mails use; after the safety rules, before the
# catch-all, so mails reach them. Some are skipped when their words are missing, some must always be tried.
INDEXED_RULES = r"""rules:
  - id: never
    when: {any: []}
    then: {category: general, channel: overview}
  - id: safety-by-keyword
    when: {text: {keywords: ["dringend*", notfall, urgent]}}
    then: {category: emergency, channel: emergency}
  - id: header-then-body
    when: {all: [{header: {name: MIME-Version, exists: true}}, {body: {keywords: [unterlagen, "anbei"]}}]}
    then: {category: documents, channel: upload}
  - id: regex-first
    when: {all: [{body: {regex: ["\\bfrist\\w*"]}}, {text: {keywords: [widerspruch]}}]}
    then: {category: objection, channel: legal}
  - id: header-regex-first
    when: {all: [{header: {name: Subject, regex: "(?i)^(re|aw|fwd?):"}}, {text: {keywords: [termin]}}]}
    then: {category: appointment, channel: appointment}
  - id: either-field
    when: {any: [{subject: {keywords: [bescheid]}}, {body: {exact: [BG, ALG]}}]}
    then: {category: change_notice, channel: portal}
  - id: not-and-keyword
    when: {all: [{not: {text: {keywords: [jobcenter]}}}, {subject: {keywords: ["miete*", rent]}}]}
    then: {category: general, channel: overview}
  - id: anywhere
    when: {text: {keywords: ["*geld"]}}
    then: {category: payment_status, channel: portal}
  - id: language-and-keyword
    when: {all: [{language: [en, uk]}, {text: {keywords: [appointment, "job*", "робот*"]}}]}
    then: {category: appointment, channel: appointment}
  - id: keyword-or-sender
    when: {any: [{text: {keywords: ["krank*"]}}, {sender: {domain: [".example.org"]}}]}
    then: {category: sick_note, channel: upload}
  - id: weekday-and-keyword
    when: {all: [{time: {weekdays: [mon, tue, wed, thu, fri], hours: "08:00-18:00"}}, {body: {keywords: ["zahlung*"]}}]}
    then: {category: payment_status, channel: portal}
  - id: attachment-and-keyword
    when: {all: [{attachments: {min_count: 1}}, {text: {keywords: [anlage, "attach*", "dokument*"]}}]}
    then: {category: documents, channel: upload}
  - id: automated-and-keyword
    when: {all: [{automated: true}, {text: {keywords: [delivery, "zustell*", undeliverable]}}]}
    then: {category: automated, channel: none, reply: null}
"""


def _mail_files(corpus: Path) -> list[Path]:
    folders = [PROJECT_ROOT / "routing_rules" / "tests", PROJECT_ROOT / "routing_rules" / "examples"]
    folders += sorted(p for p in (PROJECT_ROOT / "tests" / "data").iterdir() if p.is_dir())
    files = [path for folder in folders for path in sorted(folder.glob("*.eml"))]
    return files + sorted(corpus.rglob("*.eml"))


@pytest.fixture(scope="module")
def mails(corpus_dir: Path) -> list[tuple[str, InboundMail]]:
    return [(str(path), parse_mail(path.read_bytes())) for path in _mail_files(corpus_dir)]


@pytest.fixture(scope="module")
def indexed_rules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuleSet]:
    rules = tmp_path_factory.mktemp("indexed") / "rules"
    shutil.copytree(PROJECT_ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("tests", "examples"))
    (rules / "40-indexed.yaml").write_text(INDEXED_RULES, encoding="utf-8")
    yield load_rules(
        rules, PROJECT_ROOT / "templates", with_model=False, examples_dir=PROJECT_ROOT / "routing_rules" / "examples"
    )


def _decided(classification: Classification) -> tuple[object, ...]:
    c = classification
    return (c.rule.id, c.rule_id, c.action, c.path, c.scores, c.escalated)


def _compare(ruleset: RuleSet, mails: list[tuple[str, InboundMail]]) -> tuple[list[str], dict[str, int]]:
    """Mails whose decision or verdict differs between the two paths, and how often each rule decided."""
    policy, key = PolicyConfig(), b"test-key"
    differing: list[str] = []
    decided_by: dict[str, int] = {}
    for start in range(0, len(mails), BATCH):
        chunk = mails[start : start + BATCH]
        envelopes = [assumed_envelope(ruleset, mail, received_at=RECEIVED_AT) for _name, mail in chunk]
        worker_facts = [
            MailFacts.of(mail, env.mail_from, env.rcpt_tos, env.received_at)
            for (_name, mail), env in zip(chunk, envelopes, strict=True)
        ]
        # separate facts: nothing the one path computed (keyword hits, regex time-outs) is seen by the other
        explain_facts = [
            MailFacts.build(f.mail, f.envelope_from, f.envelope_to, f.language, f.received_at) for f in worker_facts
        ]
        by_worker = ruleset.classify_many(worker_facts)
        by_explain = [ruleset.classify(facts, traced=True) for facts in explain_facts]
        for i, (name, _mail) in enumerate(chunk):
            fast, traced = by_worker[i], by_explain[i]
            assert fast.trials == () and traced.trials, "the worker builds no trace, explain the full one"
            verdicts: list[Verdict] = [
                verdict_of(c, f, envelopes[i], ruleset, policy, key)
                for c, f in ((fast, worker_facts[i]), (traced, explain_facts[i]))
            ]
            if _decided(fast) != _decided(traced) or verdicts[0] != verdicts[1]:
                differing.append(os.path.relpath(name))
            decided_by[traced.rule.id] = decided_by.get(traced.rule.id, 0) + 1
    return differing, decided_by


def test_the_shipped_rules_decide_every_mail_alike_on_both_paths(mails: list[tuple[str, InboundMail]]) -> None:
    ruleset = load_rules(
        PROJECT_ROOT / "routing_rules",
        PROJECT_ROOT / "templates",
        cache_dir=Path(os.environ["CHANNELSHIFT_MODEL_CACHE_DIR"]),
    )
    assert len(mails) > 4000
    differing, _decided_by = _compare(ruleset, mails)
    assert differing == []


def test_keyword_indexed_rules_decide_every_mail_alike_on_both_paths(
    indexed_rules: RuleSet, mails: list[tuple[str, InboundMail]]
) -> None:
    differing, decided_by = _compare(indexed_rules, mails)
    assert differing == []
    # the comparison means something: rules that are skipped without their words did decide mails
    for rule in ("safety-by-keyword", "header-then-body", "either-field", "anywhere", "weekday-and-keyword"):
        assert decided_by.get(rule, 0) > 0, rule


def test_the_index_skips_exactly_the_rules_that_need_a_missing_keyword(indexed_rules: RuleSet) -> None:
    requires = {compiled.rule.id: compiled.check.requires for compiled in indexed_rules.rules}
    # a regex or a header regex before the keyword may time out, a non-keyword alternative matches alone
    for always_tried in ("regex-first", "header-regex-first", "keyword-or-sender", "emergency", "general"):
        assert requires[always_tried] is None, always_tried
    assert requires["never"] == frozenset()
    assert requires["either-field"] == {("subject", "bescheid"), ("body", "bg"), ("body", "alg")}
    assert requires["not-and-keyword"] == {("subject", "miete*"), ("subject", "rent")}
    assert requires["anywhere"] == {("text", "*geld")}
    mail = parse_mail(b"Subject: Hallo\r\nFrom: a@b.example\r\n\r\nIch habe eine Frage.\r\n")
    facts = MailFacts.build(mail, "a@b.example", ("info@jobcenter-musterstadt.example",), "de", RECEIVED_AT)
    tried = {compiled.rule.id for compiled in indexed_rules._tried(facts)}
    assert tried.isdisjoint(rule for rule, needed in requires.items() if needed is not None)
    assert {"regex-first", "header-regex-first", "keyword-or-sender"} <= tried


_LABELS = st.sampled_from(["de", "example", "arbeitsagentur", "justiz", "bund", "a", "x-y", "", "ag-musterstadt"])
_DOMAINS = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)
_PATTERNS = st.tuples(st.sampled_from(["", "*.", ".", " *.", "*. "]), _DOMAINS).map(lambda p: (p[0] + p[1]).upper())


@settings(max_examples=3000, deadline=None)
@given(patterns=st.lists(_PATTERNS, max_size=6), domain=_DOMAINS)
def test_the_domain_set_matches_exactly_where_the_pattern_loop_does(patterns: list[str], domain: str) -> None:
    """The partner list's set lookup (one per dot) decides as `domain_matches` over every pattern would."""
    assert DomainPatterns(patterns).match(domain) == any(domain_matches(domain, p) for p in patterns)


def test_the_partner_list_matches_subdomains_and_only_them() -> None:
    partners = DomainPatterns(
        ["arbeitsagentur.de", "*.arbeitsagentur.de", "*.justiz.de", ".bund.de", "Logistik-Meyer.example"]
    )
    assert partners.match("arbeitsagentur.de") and partners.match("jc.arbeitsagentur.de")
    assert partners.match("ag-musterstadt.justiz.de") and partners.match("justiz.de")
    assert partners.match("bamf.bund.de") and partners.match("logistik-meyer.example")
    assert not partners.match("fake-arbeitsagentur.de") and not partners.match("justiz.de.evil.example")
    assert not partners.match("sub.logistik-meyer.example") and not DomainPatterns([]).match("bund.de")

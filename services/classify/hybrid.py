"""Intent decision of the learned models: fast n-gram model, embedding model when unsure, safety, uncertainty."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.classify.embedding import embed
from services.classify.embedding import enabled as embedding_enabled
from services.classify.features import own_part
from services.classify.intent import IntentModel, IntentScores, SemanticModel, combine
from services.classify.schema import ModelSettings
from services.domain import SAFETY_CATEGORIES


@dataclass(frozen=True)
class IntentResult:
    """What the models say of one mail; `category` is None when they are unsure (the caller's fallback)."""

    category: str | None
    path: str  # "model" | "safety" | "uncertain"
    scores: IntentScores
    escalated: bool


class IntentClassifier:
    def __init__(self, fast: IntentModel, semantic: SemanticModel | None, settings: ModelSettings) -> None:
        self.fast = fast
        self.semantic = semantic
        self.settings = settings

    def needs_semantic(self, scores: IntentScores) -> bool:
        return self.semantic is not None and embedding_enabled() and should_escalate(scores, self.settings)

    def classify_many(self, texts: list[str], vectors: np.ndarray | None = None) -> list[IntentResult]:
        """Decide for a batch; `vectors` (embeddings of every text) skip the embedding model's own call."""
        fast_scores = self.fast.scores_many(texts)
        escalate = [i for i, scores in enumerate(fast_scores) if self.needs_semantic(scores)]
        final = list(fast_scores)
        kept = safety_kept(self.settings)
        if escalate and self.semantic is not None:
            chosen = vectors[escalate] if vectors is not None else embed([own_part(texts[i]) for i in escalate])
            for i, semantic_scores in zip(escalate, self.semantic.scores_many(chosen), strict=True):
                final[i] = combine(fast_scores[i], semantic_scores, self.settings.semantic_weight, kept)
        escalated = set(escalate)
        return [self.decide(scores, i in escalated) for i, scores in enumerate(final)]

    def classify(self, text: str) -> IntentResult:
        return self.classify_many([text])[0]

    def decide(self, scores: IntentScores, escalated: bool) -> IntentResult:
        return decide_intent(scores, escalated, self.settings)


def should_escalate(scores: IntentScores, settings: ModelSettings) -> bool:
    """Whether the fast model is unsure enough to ask the embedding model (the service and its cross-validation)."""
    return scores.margin < settings.escalate_below_margin or any(
        scores.of(category) >= settings.safety_watch for category in SAFETY_CATEGORIES
    )


def safety_kept(settings: ModelSettings) -> frozenset[str]:
    return frozenset(SAFETY_CATEGORIES) if settings.safety_keeps_fast else frozenset()


def decide_intent(scores: IntentScores, escalated: bool, settings: ModelSettings) -> IntentResult:
    """Safety first (recall: a probability over its threshold wins), then the top category unless unsure."""
    thresholds = settings.safety_thresholds
    for category in SAFETY_CATEGORIES:
        if category in thresholds and scores.of(category) >= thresholds[category]:
            path = "model" if scores.top == category else "safety"
            return IntentResult(category, path, scores, escalated)
    if scores.margin < settings.low_confidence_margin:
        return IntentResult(None, "uncertain", scores, escalated)
    return IntentResult(scores.top, "model", scores, escalated)

"""The learned intent model: a linear classifier over character and word n-grams of the folded mail text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion
from sklearn.svm import LinearSVC

from services.classify.features import own_part, quoted_part
from services.classify.ngrams import FastFeatures

# Decision values of a linear SVM are margins, not probabilities; a softmax with this scale turns them into
# scores that sum to 1; the scale is the one with the lowest cross-validated log-loss on the shipped examples.
SCORE_SCALE = 8.0
TOP_FEATURES = 5
WORD_PATTERN = r"(?u)\b\w\w+\b"


@dataclass(frozen=True)
class IntentScores:
    """Category probabilities of one mail, best first."""

    ranked: tuple[tuple[str, float], ...]

    @property
    def top(self) -> str:
        return self.ranked[0][0]

    @property
    def margin(self) -> float:
        return self.ranked[0][1] - (self.ranked[1][1] if len(self.ranked) > 1 else 0.0)

    def of(self, category: str) -> float:
        for name, score in self.ranked:
            if name == category:
                return score
        return 0.0


@dataclass(frozen=True)
class Neighbour:
    file: str
    category: str
    similarity: float


def _features() -> FeatureUnion:
    return FeatureUnion(
        [
            # character n-grams inside word boundaries: robust to typos, inflection, missing umlauts, and
            # they work for every script without a tokenizer
            (
                "chars",
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True, preprocessor=own_part
                ),
            ),
            (
                "words",
                TfidfVectorizer(
                    analyzer="word",
                    ngram_range=(1, 2),
                    sublinear_tf=True,
                    token_pattern=WORD_PATTERN,
                    preprocessor=own_part,
                ),
            ),
            # quoted or forwarded text: its own, weaker features (a quoted letter is often about something else)
            (
                "quoted",
                TfidfVectorizer(
                    analyzer="word",
                    min_df=2,
                    sublinear_tf=True,
                    token_pattern=WORD_PATTERN,
                    preprocessor=quoted_part,
                ),
            ),
        ],
        transformer_weights={"chars": 1.0, "words": 1.0, "quoted": 0.4},
    )


class IntentModel:
    """Trained on labelled example texts (see features.model_text); predicts the citizen categories."""

    def __init__(
        self,
        features: FeatureUnion,
        classifier: LinearSVC,
        matrix: sparse.csr_matrix,
        files: Sequence[str],
        labels: Sequence[str],
    ) -> None:
        self._features = features
        self._classifier = classifier
        self._matrix = matrix
        self._files = tuple(files)
        self._labels = tuple(labels)
        self.categories: tuple[str, ...] = tuple(str(c) for c in classifier.classes_)
        self._names = np.asarray(features.get_feature_names_out())
        self._row_norms = sparse.linalg.norm(matrix, axis=1)
        self._fast = FastFeatures(features)

    def __getstate__(self) -> dict[str, object]:
        # the fast features are derived from the fitted vectorizers (a 2 MB code table): rebuilt, not pickled
        state = dict(self.__dict__)
        state.pop("_fast", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._fast = FastFeatures(self._features)

    @classmethod
    def train(cls, texts: Sequence[str], labels: Sequence[str], files: Sequence[str] | None = None) -> IntentModel:
        if len(set(labels)) < 2:
            raise ValueError("the intent model needs examples of at least two categories")
        features = _features()
        matrix = features.fit_transform(list(texts)).tocsr()
        classifier = LinearSVC(C=0.5, class_weight="balanced", random_state=0)  # liblinear shuffles: fixed seed
        classifier.fit(matrix, list(labels))
        return cls(features, classifier, matrix, files or [str(i) for i in range(len(texts))], labels)

    def vectorize(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return self._fast.transform(list(texts))

    def decisions(self, matrix: sparse.csr_matrix) -> np.ndarray:
        """`LinearSVC.decision_function` without its input checks (a third of the cost of one mail): the same
        product and sum, so the same values."""
        coef = self._classifier.coef_
        scores: np.ndarray = np.asarray(matrix @ coef.T) + self._classifier.intercept_
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    def scores_many(self, texts: Sequence[str]) -> list[IntentScores]:
        if not texts:
            return []
        decisions = np.atleast_2d(self.decisions(self.vectorize(texts)))
        return [self._scores(row) for row in decisions]

    def scores(self, text: str) -> IntentScores:
        return self.scores_many([text])[0]

    def _scores(self, decision: np.ndarray) -> IntentScores:
        scaled = [SCORE_SCALE * float(value) for value in decision]
        peak = max(scaled)
        exps = [math.exp(value - peak) for value in scaled]
        total = sum(exps)
        pairs = sorted(
            ((category, exp / total) for category, exp in zip(self.categories, exps, strict=True)),
            key=lambda pair: -pair[1],
        )
        return IntentScores(tuple((category, round(score, 4)) for category, score in pairs))

    def weightiest(
        self, vector: sparse.csr_matrix, category: str, count: int = TOP_FEATURES
    ) -> list[tuple[str, float]]:
        """The n-grams of a vectorized text that pushed hardest towards `category` (feature value x weight)."""
        row = self.categories.index(category)
        weights = self._classifier.coef_[row]
        contributions = [(int(i), float(v * weights[i])) for i, v in zip(vector.indices, vector.data, strict=True)]
        contributions.sort(key=lambda item: -item[1])
        return [(str(self._names[i]).split("__", 1)[-1], round(c, 4)) for i, c in contributions[:count] if c > 0]

    def neighbours(self, vector: sparse.csr_matrix, count: int = 3) -> list[Neighbour]:
        """The example mails most similar to a vectorized text (cosine of the n-gram vectors), with labels."""
        norms = self._row_norms * (sparse.linalg.norm(vector) or 1.0)
        similarity = np.asarray(self._matrix @ vector.T.toarray()).ravel() / np.where(norms == 0, 1.0, norms)
        best = np.argsort(-similarity)[:count]
        return [Neighbour(self._files[i], self._labels[i], round(float(similarity[i]), 3)) for i in best]


def _ranked(categories: Sequence[str], probabilities: Sequence[float]) -> IntentScores:
    pairs = sorted(zip(categories, (float(p) for p in probabilities), strict=True), key=lambda pair: -pair[1])
    return IntentScores(tuple((category, round(score, 4)) for category, score in pairs))


class SemanticModel:
    """Logistic regression over sentence embeddings: it knows that a Persian and a German paraphrase agree."""

    def __init__(self, classifier: LogisticRegression) -> None:
        self._classifier = classifier
        self.categories: tuple[str, ...] = tuple(str(c) for c in classifier.classes_)

    @classmethod
    def train(cls, vectors: np.ndarray, labels: Sequence[str]) -> SemanticModel:
        classifier = LogisticRegression(C=50.0, tol=1e-3, max_iter=3000, class_weight="balanced")
        classifier.fit(vectors, list(labels))
        return cls(classifier)

    def scores_many(self, vectors: np.ndarray) -> list[IntentScores]:
        if not len(vectors):
            return []
        return [_ranked(self.categories, row) for row in self._classifier.predict_proba(vectors)]


def combine(
    fast: IntentScores, semantic: IntentScores, weight: float = 0.5, keep_highest: frozenset[str] = frozenset()
) -> IntentScores:
    """The weighted mean of the two models' probabilities; for `keep_highest` (the safety categories, when the
    safety layer is to see either model's alarm) the higher of the mean and the fast model's own score."""
    categories = [name for name, _ in fast.ranked]
    mean = {c: (1 - weight) * fast.of(c) + weight * semantic.of(c) for c in categories}
    for category in keep_highest & set(categories):
        mean[category] = max(mean[category], fast.of(category))
    return _ranked(categories, [mean[c] for c in categories])

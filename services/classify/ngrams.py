"""The fitted n-gram features of the intent model, computed with numpy: the same matrix as scikit-learn's transform.

scikit-learn builds every character n-gram of a mail as a Python string and looks each one up in a dict, about
9,000 per mail of 3,000 characters: two thirds of the fast path's time. Here the characters of a whole batch
become small integer codes, each window of 3 to 5 of them one 64-bit number, and the vocabulary is a sorted
array of those numbers, so a batch costs a few numpy calls. The numbers encode the characters exactly (no
hashing), so the counts, and from them the tf-idf values, are those of `TfidfVectorizer.transform`;
tests/test_classification.py compares both on every labelled mail and on generated text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion
from sklearn.preprocessing import normalize
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

_UNKNOWN = 0  # code of a character no vocabulary n-gram contains, and of the gap between two documents
_GAP = "\x00"
_MAX_CODE_POINT = 0x10FFFF


_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * 2**64 / golden ratio


class KeyTable:
    """An open-addressing hash table from n-gram keys (all > 0) to columns, looked up for a whole array at once:
    one or two probes per key instead of the sixteen steps of a binary search over 50,000 keys."""

    def __init__(self, keys: np.ndarray, columns: np.ndarray) -> None:
        bits = max(4, int(len(keys) * 4 - 1).bit_length())  # at most a quarter full
        self._shift = np.uint64(64 - bits)
        self._mask = np.uint64((1 << bits) - 1)
        self._keys = np.zeros(1 << bits, dtype=np.uint64)  # 0: empty (a key has no unknown character, so > 0)
        self._columns = np.full(1 << bits, -1, dtype=np.int64)
        home = self._home(keys)
        pending = np.arange(len(keys))
        self._probes = 0
        # linear probing, every pending key at once: in probe round r a key tries home + r; of several keys
        # that want the same free slot the first wins, the others go on, so every slot before a key's own is
        # taken, as a lookup expects
        while len(pending):
            slots = (home[pending] + np.uint64(self._probes)) & self._mask
            free = self._keys[slots] == 0
            candidates, slots = pending[free], slots[free]
            slots, first = np.unique(slots, return_index=True)
            placed = candidates[first]
            self._keys[slots], self._columns[slots] = keys[placed], columns[placed]
            pending = np.setdiff1d(pending, placed, assume_unique=True)
            self._probes += 1

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (keys * _MULTIPLIER) >> self._shift

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The column of each key, -1 for a key not in the table."""
        found = np.full(len(keys), -1, dtype=np.int64)
        home = self._home(keys)
        pending = np.arange(len(keys))
        for probe in range(self._probes):
            slots = (home[pending] + np.uint64(probe)) & self._mask
            stored = self._keys[slots]
            match = stored == keys[pending]
            found[pending[match]] = self._columns[slots[match]]
            pending = pending[~match & (stored != 0)]
            if not len(pending):
                break
        return found


class CharNgramCounter:
    """Counts of a fitted `analyzer="char_wb"` vectorizer's vocabulary n-grams in a batch of documents."""

    def __init__(self, vectorizer: TfidfVectorizer) -> None:
        vocabulary: dict[str, int] = vectorizer.vocabulary_
        self.low, self.high = vectorizer.ngram_range
        self.size = len(vocabulary)
        self.dtype = vectorizer.dtype
        alphabet = sorted({char for gram in vocabulary for char in gram} - {_GAP})
        self.base = len(alphabet) + 1
        if self.base**self.high >= 2**60 or self.base >= 2**16:
            raise ValueError("too many distinct characters for exact 64-bit n-gram keys")
        if self.low > 3:
            # a padded word shorter than the lowest n is one n-gram of its own in scikit-learn; never with n <= 3
            raise ValueError("char_wb n-grams from more than 3 characters up")
        if _GAP in "".join(vocabulary) or any(not self.low <= len(gram) <= self.high for gram in vocabulary):
            raise ValueError("a vocabulary this counter does not reproduce exactly")
        self._codes = np.zeros(_MAX_CODE_POINT + 1, dtype=np.uint16)
        self._codes[[ord(char) for char in alphabet]] = np.arange(1, self.base, dtype=np.uint16)
        self._space = int(self._codes[ord(" ")])
        all_keys, all_columns = [], []
        for n in range(self.low, self.high + 1):
            grams = [gram for gram in vocabulary if len(gram) == n]
            all_columns.append(np.array([vocabulary[gram] for gram in grams], dtype=np.int64))
            keys = self._window_keys(self._encode("".join(grams)), n)[::n] if grams else np.zeros(0, np.uint64)
            all_keys.append(self._tagged(keys, n))
        # one table for every n (the key carries n), so a batch needs one look-up, not one per n
        self._table = KeyTable(np.concatenate(all_keys), np.concatenate(all_columns))

    def _encode(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return self._codes[points].astype(np.uint64)

    def _window_keys(self, codes: np.ndarray, n: int) -> np.ndarray:
        """The key of every window of n codes: the codes as the digits of a number in base `self.base`."""
        count = len(codes) - n + 1
        keys = codes[:count].copy()
        for offset in range(1, n):
            keys *= np.uint64(self.base)
            keys += codes[offset : offset + count]
        return keys

    @staticmethod
    def _tagged(keys: np.ndarray, n: int) -> np.ndarray:
        """Keys of windows of different lengths made distinct: the length in the lowest three bits."""
        return keys * np.uint64(8) + np.uint64(n)

    def counts(self, documents: Sequence[str]) -> Cells | None:
        """The counts, or None when a document holds the gap character (the caller uses scikit-learn)."""
        parts = []
        for document in documents:
            if _GAP in document:
                return None
            # char_wb pads each white-space separated word with one space and takes n-grams inside it; two
            # spaces between padded words keep every window that crosses a word boundary from looking valid
            words = document.split()
            parts.append(" " + "  ".join(words) + " " if words else "")
        text = _GAP.join(parts) + _GAP
        codes = self._encode(text)
        starts = np.cumsum([0] + [len(part) + 1 for part in parts])
        unknown = np.concatenate(([0], np.cumsum(codes == _UNKNOWN)))
        spaces = np.concatenate(([0], np.cumsum(codes == self._space)))
        window_positions, window_keys = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
        for n in range(self.low, min(self.high, len(codes)) + 1):
            count = len(codes) - n + 1
            # a window belongs to one padded word: no unknown code in it, no space but at its two ends
            valid = (unknown[n : n + count] == unknown[:count]) & (
                spaces[n - 1 : n - 1 + count] == spaces[1 : count + 1]
            )
            positions = np.flatnonzero(valid)
            window_positions.append(positions)
            window_keys.append(self._tagged(self._window_keys(codes, n)[positions], n))
        columns = self._table.find(np.concatenate(window_keys))
        hit = columns >= 0
        rows = np.searchsorted(starts, np.concatenate(window_positions)[hit], side="right") - 1
        cells, tally = np.unique(rows * self.size + columns[hit], return_counts=True)
        return cells, tally


class WordNgramCounter:
    """Counts of a fitted `analyzer="word"` vectorizer's vocabulary n-grams: its own tokens, one dict look-up
    each, and numpy for the tally (scikit-learn's per-document dict and matrix checks cost more than the look-up)."""

    def __init__(self, vectorizer: TfidfVectorizer) -> None:
        self._vocabulary: dict[str, int] = vectorizer.vocabulary_
        self._tokenize: Callable[[str], list[str]] = vectorizer.build_tokenizer()
        self.low, self.high = vectorizer.ngram_range
        self.size = len(self._vocabulary)
        self.dtype = vectorizer.dtype

    def counts(self, documents: Sequence[str]) -> Cells:
        get = self._vocabulary.get
        rows: list[int] = []
        columns: list[int] = []
        for row, document in enumerate(documents):
            tokens = self._tokenize(document)
            found = [column for token in self._ngrams(tokens) if (column := get(token)) is not None]
            columns += found
            rows += [row] * len(found)
        cells, tally = np.unique(
            np.array(rows, dtype=np.int64) * self.size + np.array(columns, dtype=np.int64), return_counts=True
        )
        return cells, tally

    def _ngrams(self, tokens: list[str]) -> list[str]:
        grams = list(tokens) if self.low == 1 else []
        for n in range(max(self.low, 2), min(self.high, len(tokens)) + 1):
            grams += [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        return grams


def _tfidf(vectorizer: TfidfVectorizer, cells: np.ndarray, tally: np.ndarray, rows: int) -> sparse.csr_matrix:
    """What `TfidfVectorizer.transform` makes of the counts: a CSR matrix with sorted indices, sublinear tf,
    idf, then each row divided by its l2 norm with scikit-learn's own kernel (the same sums in the same order)."""
    size = len(vectorizer.idf_)
    columns = (cells % size).astype(np.int32)
    data = tally.astype(np.float64)
    if vectorizer.sublinear_tf:
        np.log(data, data)
        data += 1.0
    if vectorizer.use_idf:
        data *= vectorizer.idf_[columns]
    indptr = np.searchsorted(cells // size, np.arange(rows + 1)).astype(np.int32)
    matrix = sparse.csr_matrix((data, columns, indptr), shape=(rows, size))
    if vectorizer.norm == "l2":
        inplace_csr_row_normalize_l2(matrix)
    elif vectorizer.norm is not None:
        matrix = normalize(matrix, norm=vectorizer.norm, copy=False)
    return matrix


def _hstack(blocks: list[sparse.csr_matrix]) -> sparse.csr_matrix:
    """`scipy.sparse.hstack(blocks).tocsr()` for CSR blocks with sorted indices: row by row, block by block."""
    rows = blocks[0].shape[0]
    offsets = np.cumsum([0] + [block.shape[1] for block in blocks])
    row_of = np.concatenate([np.repeat(np.arange(rows), np.diff(block.indptr)) for block in blocks])
    order = np.argsort(row_of, kind="stable")
    data = np.concatenate([block.data for block in blocks])[order]
    columns = np.concatenate([block.indices + offset for block, offset in zip(blocks, offsets, strict=False)])
    indptr = np.searchsorted(row_of[order], np.arange(rows + 1)).astype(np.int32)
    return sparse.csr_matrix((data, columns[order].astype(np.int32), indptr), shape=(rows, int(offsets[-1])))


Cells = tuple[np.ndarray, np.ndarray]  # sorted row * size + column of every non-zero count, and the counts
Counter = CharNgramCounter | WordNgramCounter


class FastFeatures:
    """A fitted FeatureUnion of TfidfVectorizers: char_wb parts counted with numpy, the others by scikit-learn."""

    def __init__(self, union: FeatureUnion) -> None:
        self._union = union
        weights: dict[str, float] = union.transformer_weights or {}
        self._parts: list[tuple[TfidfVectorizer, Counter | None, Callable[[str], str] | None, float]] = []
        for name, vectorizer in union.transformer_list:
            counter: Counter | None = None
            if isinstance(vectorizer, TfidfVectorizer) and _plain(vectorizer):
                try:
                    if vectorizer.analyzer == "char_wb":
                        counter = CharNgramCounter(vectorizer)
                    elif vectorizer.analyzer == "word" and vectorizer.stop_words is None and not vectorizer.tokenizer:
                        counter = WordNgramCounter(vectorizer)
                except ValueError:
                    counter = None  # scikit-learn's own transform: slower, the same result
            self._parts.append((vectorizer, counter, vectorizer.preprocessor, weights.get(name, 1.0)))

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        blocks = []
        for vectorizer, counter, preprocessor, weight in self._parts:
            counts = None
            if counter is not None:
                counts = counter.counts([preprocessor(text) if preprocessor else text for text in texts])
            if counts is None:
                block = sparse.csr_matrix(vectorizer.transform(texts))
                block.sort_indices()
            else:
                block = _tfidf(vectorizer, *counts, len(texts))
            if weight != 1.0:
                block.data *= weight  # what FeatureUnion's `result * weight` does to each value
            blocks.append(block)
        return _hstack(blocks)


def _plain(vectorizer: Any) -> bool:
    """Whether the document reaches the analyzer as the preprocessor returns it (no lower-casing, accent
    stripping or custom analyzer in between), the only case CharNgramCounter reproduces."""
    return (
        vectorizer.preprocessor is not None
        and vectorizer.strip_accents is None
        and not vectorizer.binary
        and vectorizer.vocabulary is None
    )

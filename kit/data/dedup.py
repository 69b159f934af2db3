"""Exact and near-duplicate detection: normalised-text hashing and MinHash LSH (``datasketch``).

Both deduplicators stream: feed documents one at a time, each call says whether the document is new, and the
first occurrence is always the one kept.

Example:
    >>> exact = ExactDeduplicator()
    >>> exact.add("Hello,  World!"), exact.add("hello world"), exact.add("other")
    (True, False, True)
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Hashable, Iterable

import numpy as np
from datasketch import MinHash, MinHashLSH

__all__ = [
    "ExactDeduplicator",
    "MinHashDeduplicator",
    "candidate_probability",
    "exact_dedup",
    "lsh_threshold",
    "normalize_for_hash",
    "shingles",
    "text_hash",
]

_PUNCT = re.compile(r"[^\w\s]")
_WS = re.compile(r"\s+")


def normalize_for_hash(text: str) -> str:
    """NFKC, lower-case, punctuation out, whitespace collapsed: texts differing only in these hash alike.

    Example:
        >>> normalize_for_hash("  Hello,\\tWORLD! ")
        'hello world'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return _WS.sub(" ", _PUNCT.sub(" ", text)).strip()


def text_hash(text: str) -> bytes:
    """16-byte BLAKE2b digest of ``normalize_for_hash(text)``."""
    return hashlib.blake2b(normalize_for_hash(text).encode("utf-8"), digest_size=16).digest()


class ExactDeduplicator:
    """Remembers normalised-text hashes (16 bytes per distinct document) and flags repeats.

    Example:
        >>> d = ExactDeduplicator()
        >>> [d.add(t) for t in ["a b", "A. B", "c"]]
        [True, False, True]
    """

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def add(self, text: str) -> bool:
        """Record ``text``; return ``True`` if it is new (keep it), ``False`` if an earlier document matched."""
        digest = text_hash(text)
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True

    def __len__(self) -> int:
        return len(self._seen)


def exact_dedup(texts: Iterable[str]) -> list[int]:
    """Indices of the documents kept by exact dedup (first occurrence of each normalised text)."""
    d = ExactDeduplicator()
    return [i for i, t in enumerate(texts) if d.add(t)]


def shingles(text: str, n: int = 5) -> list[bytes]:
    """Word ``n``-grams of the normalised text, UTF-8 encoded; a text shorter than ``n`` words is one shingle.

    Example:
        >>> shingles("a b c", n=2)
        [b'a b', b'b c']
    """
    words = normalize_for_hash(text).split()
    if len(words) <= n:
        return [" ".join(words).encode("utf-8")]
    return list(dict.fromkeys(" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)))


def lsh_threshold(bands: int, rows: int) -> float:
    """Jaccard similarity where the LSH S-curve crosses 1/2-ish: ``(1/bands) ** (1/rows)``."""
    return (1.0 / bands) ** (1.0 / rows)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard ``similarity`` share at least one LSH band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


class MinHashDeduplicator:
    """Near-duplicate detection with MinHash over word n-grams and banded LSH.

    Defaults follow the large-scale web pipelines (FineWeb/datatrove): word 5-grams, 112 permutations as 14
    bands x 8 rows, which puts the LSH threshold near Jaccard 0.72 (``self.threshold``). With ``verify=True``
    an LSH candidate only counts as a duplicate if its estimated Jaccard similarity is at least
    ``verify_threshold`` (default: the LSH threshold), which removes most false positives.

    Args:
        ngram: words per shingle.
        bands: LSH bands.
        rows: rows (permutations) per band; ``num_perm = bands * rows``.
        seed: MinHash permutation seed; keep it fixed across shards that are deduplicated together.
        verify: confirm candidates by estimated Jaccard similarity (stores one signature per kept document).
        verify_threshold: similarity required when verifying; ``None`` uses ``self.threshold``.

    Raises:
        ValueError: a non-positive argument.

    Example:
        >>> d = MinHashDeduplicator()
        >>> base = " ".join(f"w{i}" for i in range(200))
        >>> d.add("a", base), d.add("b", base + " extra"), d.add("c", "something else entirely")
        (None, 'a', None)
    """

    def __init__(
        self,
        ngram: int = 5,
        bands: int = 14,
        rows: int = 8,
        seed: int = 1,
        verify: bool = True,
        verify_threshold: float | None = None,
    ) -> None:
        for name, value in (("ngram", ngram), ("bands", bands), ("rows", rows)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1 (defaults: ngram=5, bands=14, rows=8)")
        self.ngram, self.bands, self.rows, self.seed = ngram, bands, rows, seed
        self.num_perm = bands * rows
        self.verify = verify
        self.threshold = lsh_threshold(bands, rows)
        self.verify_threshold = self.threshold if verify_threshold is None else verify_threshold
        self._lsh = MinHashLSH(num_perm=self.num_perm, params=(bands, rows))
        self._sigs: dict[Hashable, np.ndarray] = {}
        self._count = 0

    def signature(self, text: str) -> MinHash:
        """MinHash of ``text``'s shingles (one batched, vectorised update)."""
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(shingles(text, self.ngram))
        return m

    def add(self, key: Hashable, text: str) -> Hashable | None:
        """Insert ``text`` unless it near-duplicates an earlier one.

        Returns:
            ``None`` if the document is new (it is indexed under ``key``), else the key of the kept earlier
            document it duplicates.

        Raises:
            ValueError: ``key`` was already used.
        """
        if key in self._sigs:
            raise ValueError(f"key {key!r} already indexed; pass a unique key per document")
        m = self.signature(text)
        for other in self._lsh.query(m):
            if not self.verify:
                return other
            sim = float(np.mean(self._sigs[other] == m.hashvalues))
            if sim >= self.verify_threshold:
                return other
        self._lsh.insert(key, m, check_duplication=False)
        self._sigs[key] = m.hashvalues if self.verify else np.empty(0)
        self._count += 1
        return None

    def __len__(self) -> int:
        return self._count

    def describe(self) -> dict[str, float | int]:
        """Settings and the S-curve at a few similarities, for reports."""
        return {
            "ngram": self.ngram,
            "num_perm": self.num_perm,
            "bands": self.bands,
            "rows": self.rows,
            "lsh_threshold": round(self.threshold, 4),
            "verify_threshold": round(self.verify_threshold, 4) if self.verify else 0.0,
            **{
                f"p_candidate@{s}": round(candidate_probability(s, self.bands, self.rows), 4)
                for s in (0.5, 0.7, 0.8, 0.9)
            },
        }

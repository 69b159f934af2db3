"""Exact and near-duplicate detection: normalised-text hashing and MinHash LSH, in numpy.

Both deduplicators stream: feed documents one at a time or in batches, each call says whether the document is
new, and the first occurrence is always the one kept. The text is normalised once (:func:`normalize_for_hash`)
and its UTF-8 bytes feed both the exact digest and the MinHash shingles (:func:`fingerprint`). Signatures come
from :class:`kit.data.minhash.MinHasher`, a batch at a time. ``kit/data/scaleout.py`` makes the same decisions
over many processes, with the signatures and LSH bands on disk.

Example:
    >>> exact = ExactDeduplicator()
    >>> exact.add("Hello,  World!"), exact.add("hello world"), exact.add("other")
    (True, False, True)
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from array import array
from collections.abc import Hashable, Iterable, Sequence
from functools import lru_cache

import numpy as np

from kit.data.minhash import MinHasher, fmix64

__all__ = [
    "MAX_CANDIDATES",
    "ExactDeduplicator",
    "MinHashDeduplicator",
    "MinHasher",
    "band_keys",
    "candidate_probability",
    "exact_dedup",
    "fingerprint",
    "lsh_threshold",
    "normalize_for_hash",
    "shingles",
    "signature_similarity",
    "text_hash",
]

# Kept documents compared per LSH band at most (most recent first): bounds the work per document.
MAX_CANDIDATES = 64

# The normalised text is the runs of word characters (``\w``: letters, digits, underscore) joined by single
# spaces. ASCII bytes that are not word characters become spaces through one byte table; the few distinct
# non-ASCII characters of a text are checked one by one (``str.isalnum`` is exactly ``\w`` outside ASCII).
_ASCII_NON_WORD = bytes(c if chr(c).isalnum() or c == 95 or c >= 128 else 32 for c in range(256))
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _normalized_bytes(text: str) -> bytes:
    text = unicodedata.normalize("NFKC", text).lower()
    if not text.isascii():
        for ch in set(_NON_ASCII.findall(text)):
            if not ch.isalnum():  # punctuation, symbols, Unicode spaces, lone surrogates
                text = text.replace(ch, " ")
    return b" ".join(text.encode("utf-8").translate(_ASCII_NON_WORD).split())


def normalize_for_hash(text: str) -> str:
    """NFKC, lower-case, punctuation out, whitespace collapsed: texts differing only in these hash alike.

    Every run of non-word characters (``re``'s ``\\W``: punctuation and whitespace alike) becomes one space,
    and the ends are stripped.

    Example:
        >>> normalize_for_hash("  Hello,\\tWORLD! ")
        'hello world'
    """
    return _normalized_bytes(text).decode("utf-8")


def text_hash(text: str) -> bytes:
    """16-byte BLAKE2b digest of ``normalize_for_hash(text)``."""
    return hashlib.blake2b(_normalized_bytes(text), digest_size=16).digest()


def fingerprint(text: str) -> tuple[bytes, bytes]:
    """``(normalised UTF-8 bytes, exact digest)``: one normalisation shared by exact and near dedup.

    Example:
        >>> fingerprint("Hello,  World!")[1] == text_hash("hello world")
        True
    """
    raw = _normalized_bytes(text)
    return raw, hashlib.blake2b(raw, digest_size=16).digest()


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
        return self.add_digest(text_hash(text))

    def add_digest(self, digest: bytes) -> bool:
        """:meth:`add` for a digest already computed (:func:`fingerprint`)."""
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


@lru_cache(maxsize=16)
def _band_constants(bands: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 7])
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    return mult, rng.integers(0, 2**63, size=bands, dtype=np.uint64)


def band_keys(sigs: np.ndarray, bands: int, rows: int, seed: int = 1) -> np.ndarray:
    """One 64-bit key per LSH band: equal keys mean equal rows (up to a 2**-64 chance), bands never collide.

    Args:
        sigs: ``(num_perm,)`` or ``(docs, num_perm)`` uint32 signatures, ``num_perm == bands * rows``.

    Returns:
        ``(bands,)`` or ``(docs, bands)`` uint64.
    """
    mult, salt = _band_constants(bands, rows, seed)
    shaped = sigs.astype(np.uint64).reshape(*sigs.shape[:-1], bands, rows)
    return fmix64((shaped * mult).sum(axis=-1, dtype=np.uint64) + salt)


def signature_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity: the share of equal signature entries."""
    return float(np.mean(a == b))


class MinHashDeduplicator:
    """Near-duplicate detection with MinHash over word n-grams and banded LSH.

    Defaults follow the large-scale web pipelines (FineWeb/datatrove): word 5-grams, 112 permutations as 14
    bands x 8 rows, which puts the LSH threshold near Jaccard 0.72 (``self.threshold``). With ``verify=True``
    an LSH candidate only counts as a duplicate if its estimated Jaccard similarity is at least
    ``verify_threshold`` (default: the LSH threshold), which removes most false positives.

    The index holds, per kept document, its signature (for verifying), and per band one dict entry (band key
    -> the latest kept document in that bucket) plus a link to the previous kept document of the bucket, so
    a query walks the kept documents that share a band, most recent first. ``kit.data.scaleout`` makes the
    same decisions from sorted band files on disk.

    The walk stops after ``max_candidates`` kept documents per band (:data:`MAX_CANDIDATES`, 64): on a
    templated corpus, where many pages share a bucket but fall under ``verify_threshold``, an unbounded walk
    makes the run quadratic in the corpus (4x the pages took 10x the time); with the cap each document costs
    at most ``bands * max_candidates`` comparisons. A true near duplicate shares several bands with its
    original, and the buckets it shares beside the template's are small, so recall holds. ``cap_hits``
    counts the documents whose walk the cap cut short (the pipeline report shows it); ``None`` walks all.

    Memory: about 2 KB per kept document at the defaults (448 B signature, 112 B bucket links, 14 dict
    entries of band key -> document, the key), whatever the document's length.

    Args:
        ngram: words per shingle.
        bands: LSH bands.
        rows: rows (permutations) per band; ``num_perm = bands * rows``.
        seed: MinHash permutation seed; keep it fixed across shards that are deduplicated together.
        verify: confirm candidates by estimated Jaccard similarity (stores one signature per kept document).
        verify_threshold: similarity required when verifying; ``None`` uses ``self.threshold``.
        max_candidates: kept documents compared per band at most, the most recent first; ``None``: all of
            them (quadratic on templated corpora).

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
        max_candidates: int | None = MAX_CANDIDATES,
    ) -> None:
        for name, value in (("ngram", ngram), ("bands", bands), ("rows", rows)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1 (defaults: ngram=5, bands=14, rows=8)")
        if max_candidates is not None and max_candidates < 1:
            raise ValueError(
                f"max_candidates={max_candidates} must be >= 1 (default {MAX_CANDIDATES}), or None to walk "
                "every kept document of a bucket"
            )
        self.max_candidates = max_candidates
        self.cap_hits = 0  # documents whose walk stopped at max_candidates in some band
        self.compared = 0  # kept signatures compared while verifying: the work the cap bounds
        self.ngram, self.bands, self.rows, self.seed = ngram, bands, rows, seed
        self.num_perm = bands * rows
        self.verify = verify
        self.threshold = lsh_threshold(bands, rows)
        self.verify_threshold = self.threshold if verify_threshold is None else verify_threshold
        self.hasher = MinHasher(ngram, self.num_perm, seed)
        self._latest: dict[int, int] = {}  # band key -> latest kept document in that bucket
        self._below = array("q")  # [doc * bands + band]: the previous kept document in that bucket, or -1
        self._sigs = np.empty((64 if verify else 0, self.num_perm), dtype=np.uint32)
        self._keys: list[Hashable] = []
        self._key_set: set[Hashable] = set()

    def signature(self, text: str) -> np.ndarray:
        """MinHash signature of ``text``'s shingles (``num_perm`` uint32)."""
        return self.hasher.signature(_normalized_bytes(text))

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`signature` for many texts in one vectorised pass: ``(len(texts), num_perm)`` uint32."""
        return self.hasher.signatures([_normalized_bytes(t) for t in texts])

    def add(self, key: Hashable, text: str) -> Hashable | None:
        """Insert ``text`` unless it near-duplicates an earlier one.

        Returns:
            ``None`` if the document is new (it is indexed under ``key``), else the key of the kept earlier
            document it duplicates.

        Raises:
            ValueError: ``key`` was already used.
        """
        self._check_new(key)
        return self.add_signature(key, self.signature(text))

    def add_many(self, keys: Sequence[Hashable], texts: Sequence[str]) -> list[Hashable | None]:
        """:meth:`add` for a batch, in order: signatures in one vectorised pass, then the same decisions.

        Example:
            >>> d = MinHashDeduplicator()
            >>> base = " ".join(f"w{i}" for i in range(200))
            >>> d.add_many(["a", "b", "c"], [base, base + " extra", "something else entirely"])
            [None, 'a', None]

        Raises:
            ValueError: a key was already used, or ``keys`` and ``texts`` differ in length.
        """
        if len(keys) != len(texts):
            raise ValueError(f"{len(keys)} keys for {len(texts)} texts; pass one key per text")
        if len(set(keys)) != len(keys):
            raise ValueError("keys repeat within the batch; pass a unique key per document")
        for key in keys:
            self._check_new(key)
        return self.add_signatures(keys, self.signatures(texts))

    def _check_new(self, key: Hashable) -> None:
        if key in self._key_set:
            raise ValueError(f"key {key!r} already indexed; pass a unique key per document")

    def query(self, sig: np.ndarray, keys: np.ndarray | None = None) -> int | None:
        """Index (insertion order among kept documents) of a kept document ``sig`` duplicates, or ``None``."""
        keys = band_keys(sig, self.bands, self.rows, self.seed) if keys is None else keys
        cap = self.max_candidates if self.max_candidates is not None else len(self._keys) + 1
        below, bands = self._below, self.bands
        walk: list[int] = []  # band by band, the kept documents of the bucket, most recent first
        capped = False
        for b, k in enumerate(keys.tolist()):
            i = self._latest.get(k, -1)
            if i >= 0 and not self.verify:
                return i
            stop = len(walk) + cap
            while i >= 0 and len(walk) < stop:
                walk.append(i)
                i = below[i * bands + b]
            capped |= i >= 0
        if walk:
            self.compared += len(walk)
            # one vectorised comparison; the first verifying candidate in walk order, as signature_similarity
            share = np.count_nonzero(self._sigs[walk] == sig, axis=1) / self.num_perm
            hits = np.flatnonzero(share >= self.verify_threshold)
            if len(hits):
                return walk[int(hits[0])]
        self.cap_hits += capped
        return None

    def add_signatures(self, keys: Sequence[Hashable], sigs: np.ndarray) -> list[Hashable | None]:
        """:meth:`add_signature` for a batch in order (``sigs``: ``(len(keys), num_perm)``, from
        ``self.hasher.signatures``); the band keys of the whole batch are one numpy pass."""
        bands = band_keys(sigs, self.bands, self.rows, self.seed)
        return [self.add_signature(key, sig, band) for key, sig, band in zip(keys, sigs, bands)]

    def add_signature(
        self, key: Hashable, sig: np.ndarray, keys: np.ndarray | None = None
    ) -> Hashable | None:
        """:meth:`add` for a signature already computed (``self.hasher.signature``); ``keys``: its band keys,
        if already computed (:func:`band_keys`)."""
        keys = band_keys(sig, self.bands, self.rows, self.seed) if keys is None else keys
        hit = self.query(sig, keys)
        if hit is not None:
            return self._keys[hit]
        n = len(self._keys)
        if self.verify and n == len(self._sigs):
            self._sigs = np.concatenate((self._sigs, np.empty_like(self._sigs)))
        for k in keys.tolist():
            self._below.append(self._latest.get(k, -1))
            self._latest[k] = n
        if self.verify:
            self._sigs[n] = sig
        self._keys.append(key)
        self._key_set.add(key)
        return None

    def __len__(self) -> int:
        return len(self._keys)

    def describe(self) -> dict[str, float | int]:
        """Settings and the S-curve at a few similarities, for reports."""
        return {
            "ngram": self.ngram,
            "num_perm": self.num_perm,
            "bands": self.bands,
            "rows": self.rows,
            "lsh_threshold": round(self.threshold, 4),
            "verify_threshold": round(self.verify_threshold, 4) if self.verify else 0.0,
            "max_candidates": self.max_candidates or 0,
            **{
                f"p_candidate@{s}": round(candidate_probability(s, self.bands, self.rows), 4)
                for s in (0.5, 0.7, 0.8, 0.9)
            },
        }

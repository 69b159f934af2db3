"""MinHash signatures of word n-gram shingles for many documents at once, in numpy.

A batch of normalised documents (``kit.data.dedup.fingerprint``) is joined into one byte buffer, so every
shingle hash of the batch comes from one prefix sum and every permutation is one vectorised pass over all
shingles of the batch; a ``reduceat`` minimum per document ends it. No Python runs per shingle, and none
per document beyond building the list.

The hash family: a shingle is hashed as a polynomial modulo 2**64 over its UTF-8 bytes, finalised with
MurmurHash3's 64-bit mixer and cut to 32 bits (``x``); permutation ``k`` maps it to
``((a_k * x + b_k) mod 2**64) >> 32`` with ``a_k`` odd, drawn from ``seed`` (multiply-add-shift). The
signature entry is the minimum over the document's shingles. :meth:`MinHasher.signature` and
:meth:`MinHasher.signatures` give bit-identical results.

Example:
    >>> h = MinHasher(num_perm=16)
    >>> sigs = h.signatures([b"a b c d e f g", b"a b c d e f h", b"something else"])
    >>> sigs.shape, sigs.dtype.name, bool((sigs[0] == h.signature(b"a b c d e f g")).all())
    ((3, 16), 'uint32', True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MinHasher"]

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_BASE = 0x100000001B3  # odd, so it is invertible modulo 2**64
_S32 = np.uint64(32)
_S33 = np.uint64(33)
_MAX64 = np.iinfo(np.uint64).max


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, elementwise on uint64 (wrapping arithmetic).

    Example:
        >>> int(fmix64(np.array([0], dtype=np.uint64))[0])
        0
    """
    h = h ^ (h >> _S33)
    h = h * _M1
    h = h ^ (h >> _S33)
    h = h * _M2
    return h ^ (h >> _S33)


class MinHasher:
    """MinHash signatures of word n-gram shingles, one document or a batch per call.

    Each shingle is a byte range of the normalised text (words are single-space separated there), so every
    shingle hash comes from one prefix sum over the bytes. The ``num_perm`` permutations are drawn once
    from ``seed`` and applied as ``permutations x shingles`` blocks over the whole batch, contiguous along
    the shingles, so each numpy pass is a long vectorised loop. Same ``seed`` in every process gives the
    same signatures.

    Args:
        ngram: words per shingle; a text of at most ``ngram`` words is one shingle.
        num_perm: signature length.
        seed: permutation seed.
        block: shingles per vectorised block; bounds the working set at ``8 * num_perm * block`` bytes.
        max_batch_bytes: text bytes hashed together; a longer batch is hashed in groups of about this size,
            which bounds the temporaries (about 40 bytes per byte of text).

    Raises:
        ValueError: a non-positive ``ngram``, ``num_perm``, ``block`` or ``max_batch_bytes``.

    Example:
        >>> h = MinHasher(num_perm=16)
        >>> a, b = h.signatures([b"a b c d e f g", b"a b c d e f h"])
        >>> float(np.mean(a == b)) > 0.3
        True
    """

    _pow = np.ones(1, dtype=np.uint64)  # _BASE**t and its inverse, shared and grown on demand
    _ipow = np.ones(1, dtype=np.uint64)

    def __init__(
        self,
        ngram: int = 5,
        num_perm: int = 112,
        seed: int = 1,
        block: int = 8192,
        max_batch_bytes: int = 1 << 20,
    ) -> None:
        checks = (
            ("ngram", ngram),
            ("num_perm", num_perm),
            ("block", block),
            ("max_batch_bytes", max_batch_bytes),
        )
        for name, value in checks:
            if value < 1:
                raise ValueError(
                    f"{name}={value} must be >= 1 (defaults: ngram=5, num_perm=112, block=8192, "
                    "max_batch_bytes=1048576)"
                )
        self.ngram, self.num_perm, self.seed, self.block = ngram, num_perm, seed, block
        self.max_batch_bytes = max_batch_bytes
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self._a_col, self._b_col = self.a[:, None], self.b[:, None]  # (num_perm, 1): one row per permutation

    @classmethod
    def _powers(cls, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(cls._pow) < n:
            size = max(n, 2 * len(cls._pow))
            with np.errstate(over="ignore"):
                steps = np.full(size, _BASE, dtype=np.uint64)
                steps[0] = 1
                pw = np.cumprod(steps, dtype=np.uint64)
                steps[1:] = pow(_BASE, -1, 2**64)
                cls._pow, cls._ipow = pw, np.cumprod(steps, dtype=np.uint64)
        return cls._pow[:n], cls._ipow[:n]

    def _hash_ranges(self, b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """32-bit hashes (as uint64) of the byte ranges ``b[starts[i]:ends[i]]``, from one prefix sum."""
        pw, ipw = self._powers(len(b) + 1)
        prefix = np.zeros(len(b) + 1, dtype=np.uint64)
        np.cumsum((b.astype(np.uint64) + np.uint64(1)) * pw[: len(b)], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * ipw[starts]  # sum of byte * BASE**(t - start), mod 2**64
        h += (ends - starts).astype(np.uint64)
        return fmix64(h) >> _S32

    def shingle_hashes(self, raw: bytes) -> np.ndarray:
        """32-bit hashes (as uint64) of the word ``ngram``-grams of normalised UTF-8 text ``raw``.

        Example:
            >>> MinHasher(ngram=2).shingle_hashes(b"a b c").shape
            (2,)
        """
        hashes, _ = self._batch_shingles([raw])
        return hashes

    def _batch_shingles(self, docs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Shingle hashes of all ``docs`` in order, and the index of each document's first shingle.

        The documents are joined with single spaces, so the buffer's words are the documents' words in order
        (an empty document is one empty word, as on its own); shingles never cross a document boundary.
        """
        n = self.ngram
        sizes = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        b = np.frombuffer(b" ".join(docs), dtype=np.uint8)
        spaces = np.flatnonzero(b == 32)
        word_starts = np.concatenate(([0], spaces + 1))
        word_ends = np.concatenate((spaces, [len(b)]))
        doc_starts = np.concatenate(([0], np.cumsum(sizes + 1)[:-1]))
        first_word = np.searchsorted(word_starts, doc_starts)  # every document starts a word
        words = np.diff(np.append(first_word, len(word_starts)))
        counts = np.maximum(words - n + 1, 1)  # a document of at most n words is one shingle
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        total = int(first[-1] + counts[-1])
        doc_of = np.repeat(np.arange(len(docs)), counts)
        start_word = first_word[doc_of] + (np.arange(total) - first[doc_of])
        end_word = start_word + (np.minimum(words, n) - 1)[doc_of]
        return self._hash_ranges(b, word_starts[start_word], word_ends[end_word]), first

    def signatures(self, docs: Sequence[bytes]) -> np.ndarray:
        """MinHash signatures of many normalised UTF-8 texts (see ``kit.data.dedup.fingerprint``).

        Args:
            docs: normalised document bytes, any lengths (an empty one is one empty shingle).

        Returns:
            ``(len(docs), num_perm)`` uint32, row ``i`` equal to ``signature(docs[i])``.

        Example:
            >>> MinHasher(num_perm=8).signatures([b"one doc", b"", b"another one here"]).shape
            (3, 8)
        """
        out = np.empty((len(docs), self.num_perm), dtype=np.uint32)
        start, size = 0, 0
        for i, doc in enumerate(docs):  # groups of about max_batch_bytes: the temporaries stay small
            size += len(doc) + 1
            if size >= self.max_batch_bytes:
                out[start : i + 1] = self._signatures(docs[start : i + 1])
                start, size = i + 1, 0
        if start < len(docs):
            out[start:] = self._signatures(docs[start:])
        return out

    def _signatures(self, docs: Sequence[bytes]) -> np.ndarray:
        """:meth:`signatures` of one group: about 40 bytes of temporaries per byte of text."""
        x, first = self._batch_shingles(docs)
        sig = np.full((self.num_perm, len(docs)), _MAX64, dtype=np.uint64)  # (perm, docs)
        work = np.empty((self.num_perm, min(self.block, len(x))), dtype=np.uint64)
        for lo in range(0, len(x), self.block):
            hi = min(lo + self.block, len(x))
            # documents starting in this block, plus the one that runs into it from the previous block
            d0 = int(np.searchsorted(first, lo, side="right")) - 1
            d1 = int(np.searchsorted(first, hi, side="left"))
            cuts = np.maximum(first[d0:d1], lo) - lo
            out = work[:, : hi - lo]
            np.multiply(self._a_col, x[lo:hi], out=out)  # (perm, shingles)
            np.add(out, self._b_col, out=out)
            # the top 32 bits are taken after the minimum: the shift is monotone, so the result is the same
            np.minimum(sig[:, d0:d1], np.minimum.reduceat(out, cuts, axis=1), out=sig[:, d0:d1])
        sig >>= _S32
        return sig.T

    def signature(self, raw: bytes) -> np.ndarray:
        """MinHash signature (``num_perm`` uint32) of one normalised UTF-8 text: ``signatures([raw])[0]``.

        Example:
            >>> MinHasher(num_perm=4).signature(b"hello world").shape
            (4,)
        """
        return self.signatures([raw])[0]

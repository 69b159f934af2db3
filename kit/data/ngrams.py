"""Word n-gram counting on integer ids: the vectorised core of the Gopher repetition rules.

Words become integer ids (one C-level pass over a dict), and each n-gram id is built from the (n-1)-gram id
and the next word with one ``np.unique`` over int64 pairs, so ids are exact: two positions share an id if and
only if their n-grams are the same word tuples. No hash can collide, so the rules give the same answers as
counting Python tuples, which is what ``tests/test_data_repetition.py`` checks against the old code.

Example:
    >>> grams = NGramIndex(["a b a b a b".split(), "x y z".split()])
    >>> grams.top_chars(2).tolist(), grams.duplicate_chars(2).tolist()
    ([6, 2], [4, 0])
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import chain

import numpy as np

__all__ = ["NGramIndex", "duplicate_items", "word_ids"]


def duplicate_items(items: Sequence[str]) -> tuple[int, int]:
    """(items seen before, characters in them): the Gopher counting of repeated lines or paragraphs.

    Example:
        >>> duplicate_items(["a", "bb", "a", "a"])
        (2, 2)
    """
    distinct = set(items)
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


def word_ids(words: Sequence[str]) -> np.ndarray:
    """Integer id per word, numbered by first occurrence (built with C-level dict passes, no Python loop).

    Example:
        >>> word_ids(["x", "y", "x"]).tolist()
        [0, 1, 0]
    """
    index = dict(zip(dict.fromkeys(words), range(len(words))))
    return np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))


def _group(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_index, return_inverse, return_counts)`` without its per-call overhead.

    Returns:
        (group id per element, index of each group's first element, size of each group); group ids follow
        the sorted key order, and a stable sort makes each group's first element its earliest.
    """
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    new = np.empty(len(key), dtype=bool)
    new[:1] = True
    np.not_equal(sorted_key[1:], sorted_key[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    group = np.empty(len(key), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    counts = np.diff(starts, append=len(key))
    return group, order[starts], counts


class NGramIndex:
    """Exact ids of repeated n-grams over a batch of documents, built lazily for n = 1, 2, ... and cached.

    All documents' words share one id space and one array, and n-grams never cross a document boundary, so
    one sort per n serves the whole batch (per-document numpy calls cost more than the work on short texts).
    An n-gram can only repeat where its (n-1)-gram repeats, so each step sorts only those positions: most of
    the words for n = 1, a few percent by n = 5.

    Args:
        docs: each document's words (whitespace tokens for the Gopher rules); a flat list of strings is one
            document.
    """

    def __init__(self, docs: Sequence[Sequence[str]] | Sequence[str]) -> None:
        if docs and isinstance(docs[0], str):
            docs = [docs]  # type: ignore[list-item]
        lens = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        words = list(chain.from_iterable(docs))
        self.starts = np.concatenate(([0], np.cumsum(lens)))  # word offset of each document
        self.n_docs = len(docs)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.prefix = np.concatenate(([0], np.cumsum(lengths)))  # prefix[i] = characters in words[:i]
        self._ids = word_ids(words)
        self._doc = np.repeat(np.arange(self.n_docs), lens)
        self._end = np.repeat(self.starts[1:], lens)  # end of each word's document
        self._vocab = int(self._ids.max()) + 1 if len(self._ids) else 1
        # n -> (positions whose n-gram repeats, group per such position, first position and size per group)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def word_chars(self) -> np.ndarray:
        """Characters in each document's words."""
        return self.prefix[self.starts[1:]] - self.prefix[self.starts[:-1]]

    def _repeats(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if n in self._cache:
            return self._cache[n]
        if n == 1:
            prev_pos = np.arange(len(self._ids))
            key = self._doc * self._vocab + self._ids
        else:
            prev_pos, prev_group, _, _ = self._repeats(n - 1)
            keep = prev_pos + n <= self._end[prev_pos]  # the n-gram must fit in its document
            prev_pos, prev_group = prev_pos[keep], prev_group[keep]
            # (n-1)-gram group and next word as one int64 key (fits for batches under 3e9 words)
            key = prev_group * self._vocab + self._ids[prev_pos + n - 1]
        if prev_pos.size == 0:  # nothing repeats at n-1, so nothing repeats at n
            empty = np.empty(0, dtype=np.int64)
            self._cache[n] = (empty, empty, empty, empty)
            return self._cache[n]
        group, first_idx, counts = _group(key)
        repeated = counts[group] >= 2
        self._cache[n] = (prev_pos[repeated], group[repeated], prev_pos[first_idx], counts)
        return self._cache[n]

    def chars(self, i: int, n: int) -> int:
        """Characters in the words of the n-gram starting at word ``i``."""
        return int(self.prefix[i + n] - self.prefix[i])

    def top_chars(self, n: int) -> np.ndarray:
        """Per document: characters of its most frequent n-gram times its count (ties: the first to occur).

        0 for a document shorter than ``n`` words.
        """
        starts, ends = self.starts[:-1], self.starts[1:]
        fits = ends - starts >= n
        # every n-gram occurs once: the document's first n-gram wins the tie
        out = np.where(fits, self.prefix[np.minimum(starts + n, ends)] - self.prefix[starts], 0)
        pos, _, first, counts = self._repeats(n)
        if pos.size:
            top = np.flatnonzero(counts >= 2)
            doc = self._doc[first[top]]
            # per document: largest count, then earliest first position
            order = np.lexsort((first[top], -counts[top], doc))
            lead = order[np.flatnonzero(np.diff(doc[order], prepend=-1) != 0)]
            i = first[top][lead]
            out[doc[lead]] = (self.prefix[i + n] - self.prefix[i]) * counts[top][lead]
        return out

    def duplicate_chars(
        self, n: int, stop_frac: float | None = None, totals: np.ndarray | None = None
    ) -> np.ndarray:
        """Per document: characters covered by repeated n-grams, counted left to right without overlap.

        This is datatrove's rule: walking the words, an n-gram already seen is counted and the walk jumps
        past it, so the n-grams it jumps over are never marked as seen. Only positions whose n-gram occurred
        earlier can count, so the Python loop runs over those alone; whether the earlier occurrence was
        jumped over is looked up in the sorted list of counted positions.

        Args:
            n: words per n-gram.
            stop_frac: stop counting a document once ``chars / total > stop_frac`` (the caller's own test,
                written the same way so the float comparison cannot differ).
            totals: per-document denominators of that test.
        """
        out = np.zeros(self.n_docs, dtype=np.int64)
        pos, group, first, _ = self._repeats(n)
        first_at = first[group]
        later = first_at < pos
        if not later.any():
            return out
        pos, first_at, group = pos[later], first_at[later], group[later]
        doc = self._doc[pos]
        bounds = np.flatnonzero(np.diff(doc, prepend=-1, append=self.n_docs + 1))
        prefix = self.prefix
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            d = int(doc[lo])
            total = 1 if totals is None else int(totals[d])
            counted: list[int] = []
            seen_late: set[int] = set()  # n-grams whose first occurrence was jumped over, seen later
            chars, resume = 0, 0
            for c, f, gram in zip(pos[lo:hi].tolist(), first_at[lo:hi].tolist(), group[lo:hi].tolist()):
                if c < resume:
                    continue  # jumped over by the last counted n-gram
                k = bisect_right(counted, f) - 1
                if k < 0 or f >= counted[k] + n or gram in seen_late:
                    chars += int(prefix[c + n] - prefix[c])
                    counted.append(c)
                    resume = c + n
                    if stop_frac is not None and chars / total > stop_frac:
                        break
                else:
                    seen_late.add(gram)
            out[d] = chars
        return out

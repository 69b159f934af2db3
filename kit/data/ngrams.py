"""Word n-gram counting on integer ids: the vectorised core of the Gopher repetition rules.

Words become integer ids (one C-level pass over a dict), and each n-gram id is built from the (n-1)-gram id
and the next word with one ``np.unique`` over int64 pairs, so ids are exact: two positions share an id if and
only if their n-grams are the same word tuples. No hash can collide, so the rules give the same answers as
counting Python tuples, which is what ``tests/test_data_repetition.py`` checks against the old code.

Example:
    >>> grams = NGramIndex("a b a b a b".split())
    >>> grams.top_chars(2), grams.duplicate_chars(2)
    (6, 4)
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

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


class NGramIndex:
    """Exact ids of one document's repeated n-grams, built lazily for n = 1, 2, ... and cached.

    An n-gram can only repeat where its (n-1)-gram repeats, so each step sorts only the positions whose
    (n-1)-gram occurs twice or more: most of a document's words for n = 1, a few percent by n = 5.

    Args:
        words: the document's words (whitespace tokens for the Gopher rules).
    """

    def __init__(self, words: Sequence[str]) -> None:
        self.n_words = len(words)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.prefix = np.concatenate(([0], np.cumsum(lengths)))  # prefix[i] = characters in words[:i]
        self._ids = word_ids(words)
        self._vocab = int(self._ids.max()) + 1 if len(self._ids) else 1
        # n -> (positions whose n-gram repeats, group id per such position, first position and count per group)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _repeats(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if n in self._cache:
            return self._cache[n]
        if n == 1:
            ids = self._ids
            counts = np.bincount(ids)
            # ids are numbered by first occurrence, so id k first appears where the running maximum reaches k
            first = np.flatnonzero(np.diff(np.maximum.accumulate(ids), prepend=-1) > 0)
            pos = np.flatnonzero(counts[ids] >= 2)
            group = ids[pos]
        else:
            prev_pos, prev_group, _, _ = self._repeats(n - 1)
            keep = prev_pos <= self.n_words - n  # the n-gram must fit
            prev_pos, prev_group = prev_pos[keep], prev_group[keep]
            if prev_pos.size == 0:  # nothing repeats at n-1, so nothing repeats at n
                empty = np.empty(0, dtype=np.int64)
                self._cache[n] = (empty, empty, empty, empty)
                return self._cache[n]
            # (n-1)-gram id and next word as one int64 key; one sort gives groups, first positions, counts
            key = prev_group * self._vocab + self._ids[prev_pos + n - 1]
            _, first_idx, group, counts = np.unique(
                key, return_index=True, return_inverse=True, return_counts=True
            )
            repeated = counts[group] >= 2
            pos, group = prev_pos[repeated], group[repeated]
            first = prev_pos[first_idx]
        self._cache[n] = (pos, group, first, counts)
        return self._cache[n]

    def chars(self, i: int, n: int) -> int:
        """Characters in the words of the n-gram starting at word ``i``."""
        return int(self.prefix[i + n] - self.prefix[i])

    def top_chars(self, n: int) -> int:
        """Characters of the most frequent n-gram times its count (ties: the one that occurs first), 0 if none."""
        if self.n_words < n:
            return 0
        pos, _, first, counts = self._repeats(n)
        if pos.size == 0:  # every n-gram occurs once: the first one wins the tie
            return self.chars(0, n)
        best = counts.max()
        i = int(first[counts == best].min())
        return self.chars(i, n) * int(best)

    def duplicate_chars(self, n: int, stop_frac: float | None = None, total: int = 1) -> int:
        """Characters covered by repeated n-grams, counted left to right without overlap (datatrove's rule).

        Walking the words, an n-gram already seen is counted and the walk jumps past it, so the n-grams it
        jumps over are never marked as seen. Only positions whose n-gram occurred earlier can count, so the
        Python loop runs over those alone; whether the earlier occurrence was jumped over is looked up in the
        sorted list of counted positions.

        Args:
            n: words per n-gram.
            stop_frac: return as soon as ``chars / total > stop_frac`` (the caller's own test, written the
                same way so the float comparison cannot differ).
            total: the denominator of that test.
        """
        if self.n_words < n:
            return 0
        pos, group, first, _ = self._repeats(n)
        first_at = first[group]
        later = first_at < pos
        if not later.any():
            return 0
        counted: list[int] = []
        seen_late: set[int] = set()  # n-grams whose first occurrence was jumped over, seen later
        chars, resume = 0, 0
        for c, f, gram in zip(pos[later].tolist(), first_at[later].tolist(), group[later].tolist()):
            if c < resume:
                continue  # jumped over by the last counted n-gram
            k = bisect_right(counted, f) - 1
            first_skipped = k >= 0 and f < counted[k] + n
            if not first_skipped or gram in seen_late:
                chars += self.chars(c, n)
                counted.append(c)
                resume = c + n
                if stop_frac is not None and chars / total > stop_frac:
                    return chars
            else:
                seen_late.add(gram)
        return chars

"""Composable document filters: length bounds, Gopher quality rules, Gopher repetition rules.

Every filter is a small object with a ``name`` and a ``reason(text) -> str | None`` method: ``None`` keeps the
document, a string such as ``"gopher_quality:stop_words"`` names the rule that rejected it. Calling a filter
returns ``True`` to keep. Defaults are the thresholds of the public reference pipelines (Gopher, Rae et al.
2021, as implemented in datatrove); every threshold is a constructor argument.

Example:
    >>> chain = FilterChain([LengthFilter(min_chars=10), GopherQualityFilter(min_words=3)])
    >>> chain.reason("the quick brown fox jumps over the lazy dog and the cat")
    >>> chain.reason("$$$ ### @@@ !!!")
    'gopher_quality:hash_word_ratio'
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from kit.data.ngrams import NGramIndex, duplicate_items

__all__ = [
    "GOPHER_STOP_WORDS",
    "DocFilter",
    "FilterChain",
    "FunctionFilter",
    "GopherQualityFilter",
    "GopherRepetitionFilter",
    "LengthFilter",
    "default_filters",
]

# The Gopher paper's stop-word rule: a real English document contains at least two of these.
GOPHER_STOP_WORDS: frozenset[str] = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_BULLETS = ("•", "●", "○", "▪", "◦", "*", "-", "\u2013", "·", "‣")
_ELLIPSES = ("...", "…")
_PARAGRAPH = re.compile(r"\n{2,}")
_HAS_LETTER = re.compile(r"[^\W\d_]")


class DocFilter(ABC):
    """Base class: subclasses set ``name`` and implement ``reason``."""

    name: str = "filter"

    @abstractmethod
    def reason(self, text: str) -> str | None:
        """Return ``None`` to keep ``text`` or ``"<name>:<rule>"`` naming why it is removed."""

    def reasons(self, texts: Sequence[str]) -> list[str | None]:
        """:meth:`reason` for each text; filters with batched work (the repetition rules) override it."""
        return [self.reason(text) for text in texts]

    def __call__(self, text: str) -> bool:
        return self.reason(text) is None


@dataclass
class FunctionFilter(DocFilter):
    """Wrap any ``keep(text) -> bool`` predicate as a named filter.

    Example:
        >>> f = FunctionFilter(lambda t: "lorem" not in t, name="no_lorem")
        >>> f.reason("lorem ipsum")
        'no_lorem'
    """

    keep: Callable[[str], bool]
    name: str = "custom"

    def reason(self, text: str) -> str | None:
        return None if self.keep(text) else self.name


@dataclass
class LengthFilter(DocFilter):
    """Character-length bounds on the whole document.

    Args:
        min_chars: shorter documents are removed (rule ``min_chars``).
        max_chars: longer documents are removed (rule ``max_chars``); ``None`` for no upper bound.

    Raises:
        ValueError: the bounds are negative or inverted.
    """

    min_chars: int = 100
    max_chars: int | None = 1_000_000
    name: str = "length"

    def __post_init__(self) -> None:
        if self.min_chars < 0:
            raise ValueError(f"min_chars={self.min_chars} must be >= 0")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"max_chars={self.max_chars} < min_chars={self.min_chars}; raise max_chars or pass None"
            )

    def reason(self, text: str) -> str | None:
        if len(text) < self.min_chars:
            return f"{self.name}:min_chars"
        if self.max_chars is not None and len(text) > self.max_chars:
            return f"{self.name}:max_chars"
        return None


@dataclass
class GopherQualityFilter(DocFilter):
    """Gopher quality heuristics (Rae et al. 2021, appendix A), datatrove defaults.

    Words are whitespace-separated tokens. Rules, in order: word count in ``[min_words, max_words]``; mean
    word length in ``[min_mean_word_length, max_mean_word_length]``; ``#`` count per word at most
    ``max_symbol_word_ratio``, and, tested separately against the same bound, ellipsis (``...`` or ``…``)
    count per word (the paper's "symbol-to-word ratio greater than 0.1 for either the hash symbol or the
    ellipsis"; a document with 7% of each is kept); at most ``max_bullet_lines_ratio`` of lines start with a bullet; at most
    ``max_ellipsis_lines_ratio`` of lines end with an ellipsis; at least ``min_alpha_words_ratio`` of words
    contain a letter; at least ``min_stop_words`` distinct words of ``stop_words``. Any rule set to ``None``
    is skipped.

    Example:
        >>> GopherQualityFilter().reason("too short")
        'gopher_quality:min_words'
    """

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: frozenset[str] = field(default_factory=lambda: GOPHER_STOP_WORDS)
    name: str = "gopher_quality"

    def reason(self, text: str) -> str | None:
        words = text.split()
        n = len(words)
        tag = self.name + ":"
        if self.min_words is not None and n < self.min_words:
            return tag + "min_words"
        if self.max_words is not None and n > self.max_words:
            return tag + "max_words"
        if n == 0:
            return tag + "min_words"
        mean_len = sum(len(w) for w in words) / n
        if self.min_mean_word_length is not None and mean_len < self.min_mean_word_length:
            return tag + "min_mean_word_length"
        if self.max_mean_word_length is not None and mean_len > self.max_mean_word_length:
            return tag + "max_mean_word_length"
        if self.max_symbol_word_ratio is not None:  # each symbol against the bound on its own, not summed
            if text.count("#") / n > self.max_symbol_word_ratio:
                return tag + "hash_word_ratio"
            if sum(text.count(e) for e in _ELLIPSES) / n > self.max_symbol_word_ratio:
                return tag + "ellipsis_word_ratio"
        lines = [line for line in text.split("\n") if line.strip()]
        if lines and self.max_bullet_lines_ratio is not None:
            bullets = sum(line.lstrip().startswith(_BULLETS) for line in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return tag + "bullet_lines_ratio"
        if lines and self.max_ellipsis_lines_ratio is not None:
            ellipsis = sum(line.rstrip().endswith(_ELLIPSES) for line in lines)
            if ellipsis / len(lines) > self.max_ellipsis_lines_ratio:
                return tag + "ellipsis_lines_ratio"
        if self.min_alpha_words_ratio is not None:
            alpha = sum(1 for w in words if _HAS_LETTER.search(w))
            if alpha / n < self.min_alpha_words_ratio:
                return tag + "alpha_words_ratio"
        if self.min_stop_words is not None:
            found = {w.lower().strip(".,;:!?\"'()") for w in words} & self.stop_words
            if len(found) < self.min_stop_words:
                return tag + "stop_words"
        return None


@dataclass
class GopherRepetitionFilter(DocFilter):
    """Gopher repetition rules (Rae et al. 2021, table A1), datatrove defaults.

    Duplicate lines / paragraphs as a share of lines / paragraphs and of characters; the most frequent
    2-, 3-, 4-gram's character share; the character share covered by repeated 5- to 10-grams. Character
    shares of n-grams are measured against the characters in words.

    Example:
        >>> GopherRepetitionFilter().reason("buy now\\n" * 10)
        'gopher_repetition:dup_line_frac'
    """

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_ngrams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_ngrams: tuple[tuple[int, float], ...] = (
        (5, 0.15),
        (6, 0.14),
        (7, 0.13),
        (8, 0.12),
        (9, 0.11),
        (10, 0.10),
    )
    name: str = "gopher_repetition"

    def reason(self, text: str) -> str | None:
        return self.reasons([text])[0]

    def reasons(self, texts: Sequence[str]) -> list[str | None]:
        """:meth:`reason` for many texts at once: the n-gram counting runs once over the whole batch."""
        tag = self.name + ":"
        out: list[str | None] = [self._line_reason(text) for text in texts]
        alive = [i for i, why in enumerate(out) if why is None]
        if not alive:
            return out
        grams = NGramIndex([texts[i].split() for i in alive])  # integer n-gram ids (kit/data/ngrams.py)
        word_chars = np.maximum(grams.word_chars(), 1)
        open_ = np.ones(len(alive), dtype=bool)  # no rule has fired yet
        for n, limit in self.top_ngrams:
            fired = open_ & (grams.top_chars(n) / word_chars > limit)
            for j in np.flatnonzero(fired).tolist():
                out[alive[j]] = tag + f"top_{n}gram"
            open_ &= ~fired
        for n, limit in sorted(self.dup_ngrams):
            if not open_.any():
                break
            chars = grams.duplicate_chars(n, stop_frac=limit, totals=word_chars)
            fired = open_ & (chars / word_chars > limit)
            for j in np.flatnonzero(fired).tolist():
                out[alive[j]] = tag + f"dup_{n}gram"
            open_ &= ~fired & (chars != 0)  # no repeated n-gram means no repeated longer one either
        return out

    def _line_reason(self, text: str) -> str | None:
        tag = self.name + ":"
        total = max(len(text), 1)
        paragraphs = [p for p in _PARAGRAPH.split(text.strip()) if p.strip()]
        if paragraphs:
            items, chars = duplicate_items(paragraphs)
            if self.dup_para_frac is not None and items / len(paragraphs) > self.dup_para_frac:
                return tag + "dup_para_frac"
            if self.dup_para_char_frac is not None and chars / total > self.dup_para_char_frac:
                return tag + "dup_para_char_frac"
        lines = [line for line in text.split("\n") if line.strip()]
        if lines:
            items, chars = duplicate_items(lines)
            if self.dup_line_frac is not None and items / len(lines) > self.dup_line_frac:
                return tag + "dup_line_frac"
            if self.dup_line_char_frac is not None and chars / total > self.dup_line_char_frac:
                return tag + "dup_line_char_frac"
        return None


class FilterChain(DocFilter):
    """Apply filters in order; the first that rejects names the reason.

    Args:
        filters: ``DocFilter`` objects or plain ``keep(text) -> bool`` callables (wrapped as ``FunctionFilter``
            named after the callable).

    Example:
        >>> FilterChain([LengthFilter(min_chars=5)]).reason("abc")
        'length:min_chars'
    """

    name = "chain"

    def __init__(self, filters: Iterable[DocFilter | Callable[[str], bool]]) -> None:
        self.filters: list[DocFilter] = [
            f if isinstance(f, DocFilter) else FunctionFilter(f, getattr(f, "__name__", "custom"))
            for f in filters
        ]

    def reason(self, text: str) -> str | None:
        for f in self.filters:
            why = f.reason(text)
            if why is not None:
                return why
        return None

    def reasons(self, texts: Sequence[str]) -> list[str | None]:
        """:meth:`reason` for many texts: each filter sees, as one batch, the texts the earlier ones kept."""
        out: list[str | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        for f in self.filters:
            if not todo:
                break
            whys = f.reasons([texts[i] for i in todo])
            for i, why in zip(todo, whys):
                out[i] = why
            todo = [i for i, why in zip(todo, whys) if why is None]
        return out


def default_filters(min_chars: int = 100, max_chars: int | None = 1_000_000) -> FilterChain:
    """The reference chain: length bounds, then Gopher quality, then Gopher repetition."""
    return FilterChain([LengthFilter(min_chars, max_chars), GopherQualityFilter(), GopherRepetitionFilter()])

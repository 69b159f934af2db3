"""The vectorised Gopher repetition rules give exactly the answers of the tuple-counting code they replaced."""

from __future__ import annotations

import random
import re
from collections import Counter
from itertools import accumulate

from hypothesis import given, settings
from hypothesis import strategies as st

from kit.data.filters import GopherRepetitionFilter
from kit.data.ngrams import NGramIndex, duplicate_items, word_ids
from kit.data.text import clean_text, embedded_corpus

_PARAGRAPH = re.compile(r"\n{2,}")


# ---- the implementation before vectorisation (commit d1f9d33), kept verbatim as the reference ----
def _ref_duplicates(items):
    seen, dup_items, dup_chars = set(), 0, 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items, dup_chars


def _ref_ngrams(words, n):
    return list(zip(*(words[k:] for k in range(n))))


def _ref_top(words, n):
    counts = Counter(_ref_ngrams(words, n))
    if not counts:
        return 0
    gram, count = counts.most_common(1)[0]
    return sum(len(w) for w in gram) * count


def _ref_dup(words, n, prefix):
    grams = _ref_ngrams(words, n)
    if len(set(grams)) == len(grams):
        return 0
    seen, chars, i, m = set(), 0, 0, len(grams)
    while i < m:
        if grams[i] in seen:
            chars += prefix[i + n] - prefix[i]
            i += n
        else:
            seen.add(grams[i])
            i += 1
    return chars


def reference_reason(f: GopherRepetitionFilter, text: str) -> str | None:
    tag = f.name + ":"
    total = max(len(text), 1)
    paragraphs = [p for p in _PARAGRAPH.split(text.strip()) if p.strip()]
    if paragraphs:
        items, chars = _ref_duplicates(paragraphs)
        if f.dup_para_frac is not None and items / len(paragraphs) > f.dup_para_frac:
            return tag + "dup_para_frac"
        if f.dup_para_char_frac is not None and chars / total > f.dup_para_char_frac:
            return tag + "dup_para_char_frac"
    lines = [line for line in text.split("\n") if line.strip()]
    if lines:
        items, chars = _ref_duplicates(lines)
        if f.dup_line_frac is not None and items / len(lines) > f.dup_line_frac:
            return tag + "dup_line_frac"
        if f.dup_line_char_frac is not None and chars / total > f.dup_line_char_frac:
            return tag + "dup_line_char_frac"
    words = text.split()
    prefix = [0, *accumulate(len(w) for w in words)]
    word_chars = max(prefix[-1], 1)
    for n, limit in f.top_ngrams:
        if _ref_top(words, n) / word_chars > limit:
            return tag + f"top_{n}gram"
    for n, limit in sorted(f.dup_ngrams):
        chars = _ref_dup(words, n, prefix)
        if chars / word_chars > limit:
            return tag + f"dup_{n}gram"
        if chars == 0:
            break
    return None


# ---------------------------------------------------------------------------------------------------------

WORDS = st.sampled_from(["a", "bb", "ccc", "the", "x1", "longer", "é", "dd"])
SEPS = st.sampled_from([" ", " ", " ", "\n", "\n\n", "  "])


@st.composite
def repetitive_text(draw) -> str:
    unit = draw(st.lists(st.tuples(WORDS, SEPS), min_size=1, max_size=12))
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        parts += unit if draw(st.booleans()) else draw(st.lists(st.tuples(WORDS, SEPS), max_size=12))
    return "".join(w + s for w, s in parts)


@given(st.lists(WORDS, max_size=120))
@settings(max_examples=150, deadline=None)
def test_ngram_counts_match_tuple_counting(words):
    grams = NGramIndex([words])
    prefix = [0, *accumulate(len(w) for w in words)]
    for n in range(1, 11):
        assert grams.top_chars(n)[0] == _ref_top(words, n), n
        assert grams.duplicate_chars(n)[0] == _ref_dup(words, n, prefix), n


@given(st.lists(st.lists(WORDS, max_size=40), min_size=1, max_size=6))
@settings(max_examples=100, deadline=None)
def test_batched_counts_match_per_document(docs):
    grams = NGramIndex(docs)
    for n in range(1, 8):
        prefixes = [[0, *accumulate(len(w) for w in words)] for words in docs]
        assert grams.top_chars(n).tolist() == [_ref_top(words, n) for words in docs]
        assert grams.duplicate_chars(n).tolist() == [_ref_dup(w, n, p) for w, p in zip(docs, prefixes)]


@given(repetitive_text(), st.floats(0.0, 0.5), st.floats(0.0, 0.5))
@settings(max_examples=120, deadline=None)
def test_repetition_filter_matches_reference(text, line_frac, gram_frac):
    default = GopherRepetitionFilter()
    assert default.reason(text) == reference_reason(default, text)
    tuned = GopherRepetitionFilter(
        dup_line_frac=line_frac,
        dup_para_char_frac=None,
        top_ngrams=((3, gram_frac), (2, gram_frac / 2)),
        dup_ngrams=((7, gram_frac), (5, gram_frac / 3), (6, gram_frac)),
    )
    assert tuned.reason(text) == reference_reason(tuned, text)


def test_repetition_filter_matches_reference_on_real_text():
    rng = random.Random(0)
    docs = [clean_text(t) for t in embedded_corpus().values()]
    # spliced copies make repeated n-grams of every length, near each threshold
    for _ in range(60):
        base = rng.choice(docs).split(" ")
        start = rng.randrange(max(1, len(base) - 400))
        piece = base[start : start + 400]
        reps = rng.randrange(2, 30)
        docs.append(" ".join(piece + piece[: rng.randrange(1, 10) * reps]))
    f = GopherRepetitionFilter()
    expected = [reference_reason(f, text) for text in docs]
    assert f.reasons(docs) == expected  # one batch
    assert [f.reason(text) for text in docs] == expected  # one at a time
    assert len(Counter(expected)) >= 3  # several rules fire, so the comparison is not all-None


def test_helpers():
    assert duplicate_items(["x", "yy", "x", "yy", "yy"]) == (3, 5)
    assert word_ids([]).tolist() == []
    assert NGramIndex([[]]).top_chars(2).tolist() == [0]
    assert NGramIndex(["a"]).duplicate_chars(5).tolist() == [0]

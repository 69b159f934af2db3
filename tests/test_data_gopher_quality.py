"""Gopher quality rules: the paper's separate hash and ellipsis ratios, the kit's pinned differences from
datatrove, and a parity check against datatrove's ``GopherQualityFilter`` (skipped without datatrove)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.data.filters import GopherQualityFilter

FILLER = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "eiusmod",
    "tempor",
]


def doc(n_words: int, hashes: int = 0, ellipses: int = 0) -> str:
    """``n_words`` whitespace words with two stop words, ``hashes`` words ending in ``#`` and ``ellipses``
    words ending in ``...``, twelve words to a line."""
    words = ["the", "and"] + [FILLER[i % len(FILLER)] for i in range(n_words - 2)]
    for i in range(hashes):
        words[2 + i] += "#"
    for i in range(ellipses):
        words[2 + hashes + i] += "..."
    return "\n".join(" ".join(words[i : i + 12]) for i in range(0, len(words), 12))


def test_hash_and_ellipsis_are_tested_separately():
    # 7% hashes and 7% ellipses: 14% together, but each under 0.1, so the paper (and datatrove) keep it
    assert GopherQualityFilter().reason(doc(100, hashes=7, ellipses=7)) is None
    assert GopherQualityFilter().reason(doc(100, hashes=11)) == "gopher_quality:hash_word_ratio"
    assert GopherQualityFilter().reason(doc(100, ellipses=11)) == "gopher_quality:ellipsis_word_ratio"
    assert GopherQualityFilter().reason(doc(100, hashes=10, ellipses=10)) is None  # 0.1 itself is allowed
    assert GopherQualityFilter(max_symbol_word_ratio=None).reason(doc(100, hashes=50)) is None


def test_unicode_ellipsis_counts_like_three_dots():
    text = doc(100).replace("lorem", "lorem…").replace("ipsum", "ipsum…")  # 17 of 100 words
    assert GopherQualityFilter().reason(text) == "gopher_quality:ellipsis_word_ratio"


# The kit's choices where it follows the paper more closely than datatrove (README: "Gopher rules").


def test_stop_words_ignore_case_and_attached_punctuation():
    text = doc(100).replace("the and", "The, And.", 1)
    assert GopherQualityFilter().reason(text) is None


def test_any_bullet_style_counts():
    lines = [f"{b} item with several words in the line" for b in ("*", "▪", "◦", "‣") for _ in range(10)]
    assert GopherQualityFilter().reason("\n".join(lines)) == "gopher_quality:bullet_lines_ratio"


def test_alpha_ratio_counts_whitespace_words():
    # "word." is one word with a letter (the paper's unit); a tokenizer that splits punctuation off
    # would count "." as a word without letters and drop this document
    text = " ".join(f"{w}." for w in doc(100).split())
    assert GopherQualityFilter().reason(text) is None


# ---------------------------------------------------------------- parity with datatrove

datatrove = pytest.importorskip(
    "datatrove", reason="parity test needs datatrove: pip install 'lightning-kit[data]'"
)
from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.filters import GopherQualityFilter as DTGopherQuality  # noqa: E402
from datatrove.utils.word_tokenizers import WordTokenizer  # noqa: E402


class Whitespace(WordTokenizer):
    """datatrove word tokenizer that splits on whitespace, as the kit does (datatrove's English default
    is spaCy, which splits punctuation into words of its own: a documented difference)."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def dt_keeps(text: str) -> bool:
    out = DTGopherQuality(language=Whitespace()).filter(Document(text=text, id="0"))
    return out is True or (isinstance(out, tuple) and out[0])


# Documents drawn so that none of the documented differences applies: every word has a letter (datatrove
# counts only words with a non-punctuation character), stop words are lower case with nothing attached,
# bullets are "-" or "•" (datatrove's two) attached to the first word, no blank lines (datatrove counts
# them as lines).
PLAIN = [
    "the",
    "and",
    "of",
    "to",
    "with",
    "that",
    "be",
    "have",
    *FILLER,
    "a",
    "ox",
    "internationalisation",
    "x1",
]


@st.composite
def documents(draw: st.DrawFn) -> str:
    """Lines of words where about ``rate`` of the words end in ``#``, ``...`` or ``…`` (rates on both sides
    of the 0.1 bound), some lines bulleted."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    rate, bullet_rate = (
        draw(st.sampled_from([0.0, 0.05, 0.09, 0.12, 0.2])),
        draw(st.sampled_from([0.0, 0.5, 1.0])),
    )
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        words = [rng.choice(PLAIN) for _ in range(rng.randint(1, 14))]
        words = [w + rng.choice(["#", "...", "…"]) if rng.random() < rate else w for w in words]
        lines.append((rng.choice(["-", "•"]) if rng.random() < bullet_rate else "") + " ".join(words))
    return "\n".join(lines)


@given(documents())
@settings(max_examples=300, deadline=None)
def test_parity_with_datatrove(text):
    kit = GopherQualityFilter(min_words=20)
    dt = DTGopherQuality(min_doc_words=20, language=Whitespace())
    out = dt.filter(Document(text=text, id="0"))
    assert kit(text) == (out is True), (kit.reason(text), out)


def test_datatrove_agrees_on_the_seven_percent_case():
    text = doc(100, hashes=7, ellipses=7)
    assert dt_keeps(text) and GopherQualityFilter()(text)
    assert not dt_keeps(doc(100, hashes=11)) and not GopherQualityFilter()(doc(100, hashes=11))


def test_datatrove_differences_are_the_documented_ones():
    """Each case keeps in the kit and drops in datatrove (or the reverse) for the reason the README names."""
    upper = doc(100).replace("the and", "The And", 1)  # stop words, case
    assert GopherQualityFilter()(upper) and not dt_keeps(upper)
    stars = "\n".join("* item with several words in the line" for _ in range(40))  # bullet styles
    assert not GopherQualityFilter()(stars) and GopherQualityFilter(max_bullet_lines_ratio=None)(stars)
    assert dt_keeps(stars)
    gappy = "\n\n".join(["- item with the and several words"] * 10)  # blank lines count in datatrove
    assert not GopherQualityFilter(min_words=20)(gappy)
    assert (
        DTGopherQuality(min_doc_words=20, language=Whitespace()).filter(Document(text=gappy, id="0")) is True
    )
    dashes = "\n".join(["- item with the and words"] * 4)  # 24 words, 20 with a letter: datatrove counts 20
    assert GopherQualityFilter(min_words=21, max_bullet_lines_ratio=None)(dashes)  # the kit counts 24
    dt = DTGopherQuality(min_doc_words=21, max_bullet_lines_ratio=None, language=Whitespace())
    assert dt.filter(Document(text=dashes, id="0")) == (False, "gopher_short_doc")

"""Text augmentation keeps structure: lines, punctuation, code and protected words survive every op."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.data.augment_text import (
    DEFAULT_OPS,
    TECHNICAL_WORDS,
    TextAugmenter,
    code_spans,
    eda,
    reorder_sentences,
)

PROSE = ["the", "big", "dog", "wants", "a", "quick", "answer", "hard", "problem", "we", "find", "good"]
PROTECTED = ["value", "function", "return", "list", "key", "yield", "class", "None"]
IDENTIFIERS = ["os.path", "foo_bar", "getValue", "MAX_SIZE", "dict()", "x2", "a=b", "HTTP"]
PUNCT = ["", "", "", ".", ",", ":", ";", "!", "?", ")"]
_TOKEN = re.compile(r"[A-Za-z_][\w.]*(?:\(\))?")


def protected_tokens(text: str) -> list[str]:
    """Protected words and identifiers in order (code spans included; they never change either)."""
    out = []
    for tok in _TOKEN.findall(text):
        core = tok.rstrip(".")
        camel, caps = re.search(r"[a-z][A-Z]", core), core.isupper() and len(core) > 1
        if core.lower() in TECHNICAL_WORDS or not core.isalpha() or camel or caps:
            out.append(core)
    return out


@st.composite
def prose_line(draw: st.DrawFn) -> str:
    words = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    *[st.sampled_from(PROSE)] * 3, st.sampled_from(PROTECTED), st.sampled_from(IDENTIFIERS)
                ),
                st.sampled_from(PUNCT),
            ),
            min_size=1,
            max_size=12,
        )
    )
    line = " ".join(w + p for w, p in words)
    if draw(st.booleans()):
        line = line.capitalize() if line[:1].isalpha() else line
    if draw(st.integers(0, 4)) == 0:
        line += " see `" + draw(st.sampled_from(["x = f(y)", "return value", "a . b"])) + "` here."
    return draw(st.sampled_from(["", "", "   "])) + line


CODE_LINE = st.sampled_from(["    x = compute(value)", "\tfor key in d: yield key", ">>> list(range(3))"])


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines = draw(
        st.lists(st.one_of(prose_line(), prose_line(), CODE_LINE, st.just("")), min_size=1, max_size=10)
    )
    if draw(st.booleans()):
        lines += ["```", "the big dog = value", "```"]
    return "\n".join(lines)


def stub_translate(texts: list[str], src: str, tgt: str) -> list[str]:
    return [" ".join(reversed(t.split())) for t in texts]


@given(
    documents(),
    st.sampled_from(["synonym", "insert", "swap", "delete", "reorder", "backtranslate"]),
    st.integers(0, 999),
)
@settings(max_examples=150, deadline=None)
def test_augmented_document_keeps_lines_code_and_protected_words(text, op, seed):
    aug = TextAugmenter(
        p=1.0,
        ops=(op,),
        rates={o: 0.3 for o in ("synonym", "insert", "swap", "delete")},
        translate=stub_translate,
        seed=seed,
    )
    out = aug([text])[0]
    assert out.count("\n") == text.count("\n")
    assert code_spans(out) == code_spans(text)
    if op == "backtranslate":  # a translator may rewrite any prose word; code and lines are what is promised
        return
    if op == "reorder":  # whole sentences move: same protected words, possibly in another order
        assert Counter(protected_tokens(out)) == Counter(protected_tokens(text))
    else:
        assert protected_tokens(out) == protected_tokens(text)
        # punctuation marks survive in order (deletion moves a mark onto the previous word, never drops it)
        assert re.findall(r"[.,:;!?()]", out) == re.findall(r"[.,:;!?()]", text)


def test_technical_words_are_never_replaced_by_default():
    text = "Return a new list. The function returns the value for each key; generators yield items."
    for seed in range(20):
        out = eda(text, "synonym", 1.0, random.Random(seed))
        for word in ("Return", "list.", "function", "returns", "value", "key;", "yield"):
            assert word in out.split()
    assert "yield a recent list" not in eda("Return a new list.", "synonym", 1.0, random.Random(0))


def test_punctuation_attached_words_are_matched_and_kept():
    out = eda(
        "I saw a dog.", "synonym", 1.0, random.Random(0), synonyms=lambda w: ["cat"] if w == "dog" else []
    )
    assert out == "I saw a cat."
    out = eda(
        "Big, fast (dog)!",
        "synonym",
        1.0,
        random.Random(0),
        synonyms=lambda w: ["Huge"] if w == "Big" else [],
    )
    assert out == "Huge, fast (dog)!"


def test_protected_list_is_configurable_and_synonyms_opt_in():
    assert DEFAULT_OPS == ("swap", "delete")
    assert "synonym" not in TextAugmenter().ops and "insert" not in TextAugmenter().ops
    table = {"quick": ["rapid"]}.get
    out = TextAugmenter(
        p=1.0, ops=("synonym",), rates={"synonym": 1.0}, synonyms=lambda w: table(w, []), protected={"quick"}
    )(["a quick test"])
    assert out == ["a quick test"]
    out = TextAugmenter(
        p=1.0, ops=("synonym",), rates={"synonym": 1.0}, synonyms=lambda w: table(w, []), protected=()
    )(["a quick test"])
    assert out == ["a rapid test"]


def test_reorder_keeps_line_breaks_and_wrapped_fragments():
    text = "One is first. Two is second! Three is third?\nfragment that wraps. Four here.\n    code. Stays."
    outs = {reorder_sentences(text, random.Random(s)) for s in range(10)}
    assert len(outs) > 1
    for out in outs:
        lines = out.split("\n")
        assert len(lines) == 3 and lines[2] == "    code. Stays."
        assert sorted(lines[0].split()) == sorted(text.split("\n")[0].split())
    # after a line that ends a sentence, the next line's first sentence is complete and may move
    assert any(o.split("\n")[1].startswith("Four") for o in outs) is False  # "fragment..." starts lowercase


def test_backtranslate_goes_line_by_line_and_skips_code():
    seen = []

    def translate(texts, src, tgt):
        seen.extend(texts)
        return [t.upper() for t in texts]

    out = TextAugmenter(p=1.0, ops=("backtranslate",), translate=translate)(
        ["hello there\n    x = 1\n\nbye now"]
    )
    assert out == ["HELLO THERE\n    x = 1\n\nBYE NOW"]
    assert "    x = 1" not in seen and "" not in seen


@pytest.mark.parametrize("op", ["swap", "delete"])
def test_default_ops_change_prose(op):
    text = "the big dog wants a quick answer to a hard problem"
    assert eda(text, op, 0.3, random.Random(0)) != text

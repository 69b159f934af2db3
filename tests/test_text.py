import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.data.text import clean_text, embedded_corpus, load_texts, resolve_paths

html_ish = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.sampled_from(
            [
                "<p>",
                "</p>",
                "<b>",
                "<br/>",
                "&amp;",
                "&lt;",
                "&gt;",
                "&nbsp;",
                "\x00",
                "\x07",
                "\t",
                "\r\n",
                "\n\n\n",
                "  ",
                "\uff1c",
                "\uff1e",
                "&AMP;lt;",
                "\u00a0",
                "\u3000",
            ]
        ),
    ),
    max_size=30,
).map("".join)


@given(html_ish, st.booleans())
def test_clean_text_is_idempotent(text: str, lowercase: bool) -> None:
    once = clean_text(text, lowercase=lowercase)
    assert clean_text(once, lowercase=lowercase) == once


@given(html_ish)
def test_clean_text_leaves_no_tags_controls_or_double_spaces(text: str) -> None:
    out = clean_text(text)
    assert not re.search(r"<[^>]*>", out)
    assert "  " not in out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out)
    assert out == out.strip()
    assert "\n\n\n" not in out


def test_clean_text_examples() -> None:
    assert clean_text("<p>Hello&nbsp;&amp;   <b>world</b></p>\x07") == "Hello & world"
    assert clean_text("ＡＢＣ") == "ABC"  # NFKC folds full-width letters
    assert clean_text("Mixed CASE", lowercase=True) == "mixed case"
    assert clean_text("a\n\n\n\nb") == "a\n\nb"


def test_embedded_corpus_is_the_long_tail_we_document() -> None:
    corpus = embedded_corpus()
    sizes = sorted(len(t) for t in corpus.values())
    assert len(corpus) >= 70
    assert sizes[0] < 1_000 and sizes[-1] > 30_000


def test_load_texts_counts_undecodable_bytes_and_skips_empty(tmp_path) -> None:
    (tmp_path / "a.txt").write_bytes(b"good text \xff\xfe here")
    (tmp_path / "b.txt").write_text("   <p></p>  ")
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\nnot json\n{"other": 1}\n{"text": "two"}\n')
    docs, report = load_texts(tmp_path)
    assert report.replaced_bytes == 2
    assert report.empty_skipped == 1
    assert len(report.skipped_files) == 2
    assert sorted(docs.values()) == ["good text \ufffd\ufffd here", "one", "two"]


def test_missing_path_and_empty_corpus_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        resolve_paths(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"\*.md"):
        resolve_paths(str(tmp_path / "*.md"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        load_texts(tmp_path / "empty.txt")


def test_resolve_paths_expands_folders_and_globs(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.txt", "sub/b.md", "sub/c.bin"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in resolve_paths(tmp_path)] == ["a.txt", "b.md"]
    assert [p.name for p in resolve_paths(str(tmp_path / "**" / "*.md"))] == ["b.md"]

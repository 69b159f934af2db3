"""The bytes/token plot (library and `kit data tokenizer --plot`) and BPE progress inside setup."""

from __future__ import annotations

from pathlib import Path

import pytest

import kit.data.tokenizer as tokenizer_mod
from kit.cli.commands.data import main as data_main
from kit.data.bpe_report import plot_tradeoff

ROWS = [
    {"vocab_size": 1000, "actual_vocab": 1000, "bytes_per_token": 2.6, "vocab_used_pct": 70.1},
    {"vocab_size": 4000, "actual_vocab": 4000, "bytes_per_token": 3.6, "vocab_used_pct": 34.3},
]


def test_plot_tradeoff_writes_a_png(tmp_path: Path) -> None:
    path = plot_tradeoff(ROWS, tmp_path / "sub" / "bpt.png")
    assert Path(path).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no rows"):
        plot_tradeoff([], tmp_path / "x.png")


def test_kit_data_tokenizer_plot(tmp_path: Path) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"{i}.txt").write_text(f"document number {i} says the quick brown fox jumps over it " * 5)
    out = tmp_path / "tok.png"
    assert data_main(["tokenizer", str(corpus), "--vocab-sizes", "300,400", "--plot", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("chars", "rank", "expected"), [(100, "0", False), (3_000_000, "0", True), (3_000_000, "1", False)]
)
def test_bpe_progress_on_large_corpora_rank_zero(monkeypatch, tmp_path, chars, rank, expected) -> None:
    seen, real_train = {}, tokenizer_mod.train_bpe

    def fake_train(texts, vocab_size, min_frequency, show_progress, length):
        seen.update(show_progress=show_progress, length=length)
        return real_train(["a b c"] * 5, vocab_size=300)

    monkeypatch.setattr(tokenizer_mod, "train_bpe", fake_train)
    monkeypatch.setenv("RANK", rank)
    texts = ["x" * (chars // 4)] * 4
    tokenizer_mod.load_or_train_bpe(texts, 300, directory=tmp_path)
    assert seen == {"show_progress": expected, "length": 4}

import pytest
import torch

from kit.data.corpus import unigram_cross_entropy
from kit.data.tokenizer import EOS, load_or_train_bpe, train_bpe
from kit.datamodules.text import TextDataModule

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def _write_corpus(folder, n_docs=12, words=200):
    for d in range(n_docs):
        text = " ".join(WORDS[(d * 7 + i * 3) % len(WORDS)] for i in range(words))
        (folder / f"doc{d:02d}.txt").write_text(f"<p>Document {d}</p>\n{text}\n")


def test_user_files_are_cleaned_split_tokenized_and_packed(tmp_path) -> None:
    _write_corpus(tmp_path)
    dm = TextDataModule(
        paths=str(tmp_path / "*.txt"),
        vocab_size=300,
        block_size=16,
        batch_size=4,
        val_fraction=0.25,
        test_fraction=0.0,
        decontaminate_ngram=0,  # the synthetic documents share every 13-gram
    )
    dm.setup("fit")
    assert len(dm.train_texts) == 9 and len(dm.val_texts) == 3
    assert not any("<p>" in t for t in dm.train_texts)
    assert set(dm.train_texts).isdisjoint(dm.val_texts)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16) and y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert dm.vocab_size <= 300
    assert dm.tokenizer.token_to_id(EOS) is not None


def test_setup_is_reproducible_and_the_tokenizer_is_cached(tmp_path) -> None:
    _write_corpus(tmp_path)
    kwargs = dict(
        paths=str(tmp_path),
        vocab_size=300,
        block_size=16,
        batch_size=4,
        tokenizer_dir=str(tmp_path / "tok"),
        decontaminate_ngram=0,
    )
    a, b = TextDataModule(**kwargs), TextDataModule(**kwargs)
    a.setup("fit")
    b.setup("fit")
    assert a.tokenizer_path == b.tokenizer_path
    assert len(list((tmp_path / "tok").glob("*.json"))) == 1
    assert torch.equal(next(iter(a.train_dataloader()))[0], next(iter(b.train_dataloader()))[0])
    c = TextDataModule(**{**kwargs, "seed": 7})
    c.setup("fit")
    assert a.val_texts != c.val_texts or not torch.equal(a.train_set.blocks, c.train_set.blocks)


def test_tokenizer_cache_key_changes_with_the_corpus(tmp_path) -> None:
    texts = ["hello world " * 20, "another doc " * 20]
    _, p1, cached1 = load_or_train_bpe(texts, 300, directory=tmp_path)
    _, p2, cached2 = load_or_train_bpe(texts, 300, directory=tmp_path)
    _, p3, _ = load_or_train_bpe([*texts, "new"], 300, directory=tmp_path)
    assert p1 == p2 and not cached1 and cached2
    assert p3 != p1


def test_bpe_round_trips_bytes() -> None:
    tok = train_bpe(["naïve café — 東京 " * 5], vocab_size=300)
    text = "naïve café — 東京 and unseen ☃"
    assert tok.decode(tok.encode(text).ids) == text
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_bpe(["x"], vocab_size=100)


def test_block_size_larger_than_the_corpus_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("short text one")
    (tmp_path / "b.txt").write_text("short text two")
    dm = TextDataModule(paths=str(tmp_path), vocab_size=300, block_size=512, val_fraction=0.5)
    with pytest.raises(
        ValueError, match=r"block_size=512 exceeds the corpus \(\d+ tokens\); lower data.block_size"
    ):
        dm.setup("fit")


def test_bad_arguments_and_missing_paths(tmp_path) -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        TextDataModule(batch_size=0)
    with pytest.raises(ValueError, match="val_fraction=0.0"):
        TextDataModule(val_fraction=0.0)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        TextDataModule(paths=str(tmp_path / "missing.txt")).setup("fit")


def test_embedded_corpus_default_and_unigram_baseline() -> None:
    dm = TextDataModule(vocab_size=512, block_size=64)
    dm.setup("fit")
    assert len(dm.train_texts) + len(dm.val_texts) + len(dm.test_texts) == 79
    assert 4.0 < dm.unigram_loss < 7.0  # log(512) = 6.24 is the uniform bound; frequencies beat it


def test_unigram_cross_entropy_matches_hand_computation() -> None:
    # train counts {0: 3, 1: 1}, vocab 2, add-one: p0 = 4/6, p1 = 2/6
    import math

    value = unigram_cross_entropy([0, 0, 0, 1], [0, 1], vocab_size=2)
    assert value == pytest.approx(-(math.log(4 / 6) + math.log(2 / 6)) / 2)


def test_decontaminate_split_moves_contaminated_held_out_documents_until_clean() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from kit.data.decontaminate import decontaminate_split
    from kit.health.doctor import ngram_overlap

    words = st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=0, max_size=12).map(" ".join)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(words, min_size=1, max_size=5), st.lists(words, min_size=1, max_size=5))
    def check(train, val):
        try:
            new_train, held, moved = decontaminate_split(train, {"val": val}, n=3)
        except ValueError as err:  # every val document contaminated: the error names the way out
            assert "decontaminate_ngram 0" in str(err)
            return
        assert sorted(new_train + held["val"]) == sorted(train + val)  # nothing lost, nothing duplicated
        assert ngram_overlap(new_train, held["val"], 3)["contaminated"] == []
        assert [val[i] for i in moved["val"]] == new_train[len(train) :]

    check()
    # a moved document can contaminate another: the second hop is caught too
    _, held, moved = decontaminate_split(["w x y z"], {"val": ["x y z q", "y z q r", "k l m n"]}, n=3)
    assert moved == {"val": [0, 1]} and held == {"val": ["k l m n"]}


def test_default_corpus_has_a_clean_test_split_distinct_from_validation() -> None:
    from kit.health.doctor import ngram_overlap

    dm = TextDataModule(vocab_size=512, block_size=64)
    dm.setup("fit")
    assert dm.test_texts and set(dm.test_texts).isdisjoint(dm.val_texts)
    assert set(dm.test_texts).isdisjoint(dm.train_texts)
    for held in (dm.val_texts, dm.test_texts):  # what kit doctor's leakage check computes
        assert ngram_overlap(dm.train_texts, held, 13)["contaminated"] == []
    assert sum(map(len, dm.moved_docs.values())) > 0  # the embedded corpus does share boilerplate
    assert not torch.equal(dm.test_set.blocks[:1], dm.val_set.blocks[:1])
    assert dm.predict_dataloader().dataset is dm.test_set  # kit predict runs on held-out test text


def test_no_test_split_is_a_clear_error_not_the_validation_split(tmp_path) -> None:
    _write_corpus(tmp_path, n_docs=4, words=60)
    off = TextDataModule(
        paths=str(tmp_path), vocab_size=300, block_size=16, test_fraction=0.0, decontaminate_ngram=0
    )
    off.setup("fit")
    with pytest.raises(ValueError, match="no test split .*data.test_fraction"):
        off.test_dataloader()
    assert off.predict_dataloader().dataset is off.val_set  # predict falls back to validation

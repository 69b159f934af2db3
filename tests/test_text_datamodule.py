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
    folder.mkdir(parents=True, exist_ok=True)
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


# -- a pretrained tokenizer folder instead of trained BPE -------------------------------------------------------
def _tokenizer_folder(folder, specials: dict[str, str] | None = None, extra: list[str] | None = None):
    """A Hugging Face style tokenizer folder: tokenizer.json plus tokenizer_config.json naming the specials."""
    import json

    tok = train_bpe([" ".join(WORDS)] * 20, vocab_size=300)
    added = sorted({t for t in (specials or {}).values() if t != EOS} | set(extra or []))
    tok.add_special_tokens(added)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {f"{role}_token": t for role, t in (specials or {}).items()}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def test_a_tokenizer_folder_replaces_bpe_with_its_own_bos_and_eos(tmp_path) -> None:
    from kit.datamodules.text import load_tokenizer_folder

    _write_corpus(tmp_path / "corpus")
    tok = _tokenizer_folder(tmp_path / "model", {"bos": "<s>", "eos": "</s>", "pad": "<pad>"})
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    cache = tmp_path / "bpe-cache"
    dm = TextDataModule(
        paths=str(tmp_path / "corpus" / "*.txt"),
        vocab_size=4096,  # unused with a tokenizer folder
        block_size=16,
        batch_size=4,
        val_fraction=0.25,
        test_fraction=0.0,
        decontaminate_ngram=0,
        tokenizer_dir=str(cache),
        tokenizer=str(tmp_path / "model"),
    )
    dm.setup("fit")
    assert not cache.exists(), "no BPE is trained or cached"
    assert dm.vocab_size == tok.get_vocab_size() == 303
    assert dm.special_ids == {"bos": bos, "eos": eos, "pad": tok.token_to_id("<pad>")}
    stream = dm.train_set.blocks[:, :-1].flatten().tolist()
    first = [bos, *tok.encode(dm.train_texts[0], add_special_tokens=False).ids, eos, bos]
    assert stream[: len(first)] == first, "each document is <s> text </s>, the next starts with <s>"
    assert stream.count(bos) == stream.count(eos) or abs(stream.count(bos) - stream.count(eos)) == 1
    folder = load_tokenizer_folder(tmp_path / "model")
    assert dm.state_dict()["tokenizer_sha256"] == folder.sha256 and len(folder.sha256) == 64
    assert dm.tokenizer_path == str(tmp_path / "model" / "tokenizer.json")


def test_resuming_with_a_changed_tokenizer_file_warns_naming_both_hashes(tmp_path) -> None:
    _write_corpus(tmp_path / "corpus")
    _tokenizer_folder(tmp_path / "model", {"eos": EOS})
    kwargs = {"paths": str(tmp_path / "corpus" / "*.txt"), "block_size": 16, "test_fraction": 0.0}
    dm = TextDataModule(decontaminate_ngram=0, tokenizer=str(tmp_path / "model"), **kwargs)
    dm.setup("fit")
    saved = dm.state_dict()
    dm.load_state_dict(saved)  # the same file: silent
    changed = dict(saved, tokenizer_sha256="0" * 64)
    with pytest.warns(UserWarning, match=r"different tokenizer.json \(sha256 [0-9a-f]{12}\).*\(000000000000\)"):
        dm.load_state_dict(changed)


def test_a_folder_without_tokenizer_json_says_what_to_pass(tmp_path) -> None:
    from kit.datamodules.text import load_tokenizer_folder

    with pytest.raises(FileNotFoundError, match="holds no tokenizer.json; pass a Hugging Face model"):
        load_tokenizer_folder(tmp_path)


def test_a_tokenizer_larger_than_the_model_vocabulary_names_both_sizes(tmp_path) -> None:
    import lightning.pytorch as pl

    from kit.models.gpt import CausalLM
    from kit.nn import GPTConfig

    _write_corpus(tmp_path / "corpus")
    _tokenizer_folder(tmp_path / "model", {"eos": EOS})  # 300 tokens
    dm = TextDataModule(
        paths=str(tmp_path / "corpus" / "*.txt"), block_size=16, test_fraction=0.0, decontaminate_ngram=0,
        tokenizer=str(tmp_path / "model"),
    )  # fmt: skip
    lm = CausalLM(GPTConfig.from_name("debug", vocab_size=256, block_size=16))
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"vocab_size=256 is smaller than the data's tokenizer \(300 tokens\)"):
        trainer.fit(lm, datamodule=dm)


def test_topic_rows_use_the_pretrained_tokenizers_own_specials(tmp_path) -> None:
    from kit.datamodules.transfer import MLMDataModule, TopicDataModule

    tok = _tokenizer_folder(tmp_path / "gpt", {"bos": EOS, "eos": EOS})  # GPT-2 style: one token for all roles
    dm = TopicDataModule(block_size=32, train_fraction=0.05, tokenizer=str(tmp_path / "gpt"))
    dm.setup("fit")
    sep = tok.token_to_id(EOS)
    x, _ = dm.train_set[0]
    assert x[0] == sep and dm.pad_id == sep and dm.vocab_size == tok.get_vocab_size()
    assert x[1:].tolist() != [sep] * 31, "the passage is encoded between the start and the separator"
    with pytest.raises(ValueError, match="has no mask_token, which masked-LM pretraining needs"):
        MLMDataModule(block_size=32, tokenizer=str(tmp_path / "gpt")).setup("fit")

    specials = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]"}
    bert = _tokenizer_folder(tmp_path / "bert", specials)
    mlm = MLMDataModule(block_size=32, tokenizer=str(tmp_path / "bert"))
    mlm.setup("fit")
    batch = next(iter(mlm.train_dataloader()))
    assert (batch["input_ids"][:, 0] == bert.token_to_id("[CLS]")).all()
    assert (batch["input_ids"] == bert.token_to_id("[MASK]")).any()
    assert (batch["labels"][batch["input_ids"] == bert.token_to_id("[PAD]")] == -100).all()

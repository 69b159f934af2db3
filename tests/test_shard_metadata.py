"""Token shards carry their tokenizer: `kit data shards` records it, WebDataModule and CausalLM read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit.cli.commands.data import main
from kit.data.text import embedded_corpus
from kit.data.tokenizer import train_bpe

DOCS = list(embedded_corpus().values())[:12]


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, int]:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    tok = train_bpe(DOCS, vocab_size=400)
    tok.save(str(tmp_path / "tok.json"))
    out = tmp_path / "shards"
    args = [
        "shards",
        str(corpus),
        "-o",
        str(out),
        "--tokenizer",
        str(tmp_path / "tok.json"),
        "--block-size",
        "16",
    ]
    assert main(args) == 0
    return out, tok.get_vocab_size()


def test_shards_record_the_tokenizer_and_the_datamodule_reads_it(shards, capsys) -> None:
    from kit.datamodules.webdataset import WebDataModule

    out, vocab = shards
    meta = json.loads((out / "kit-shards.json").read_text())
    assert meta["vocab_size"] == vocab and meta["block_size"] == 16 and len(meta["tokenizer_sha256"]) == 64
    dm = WebDataModule(str(out / "train-*.tar"), batch_size=4, shuffle_buffer=0)
    assert (dm.vocab_size, dm.block_size) == (vocab, 16) and dm.tokenizer.get_vocab_size() == vocab
    with pytest.raises(
        ValueError, match=rf"vocab_size=999 but the shards were tokenized with a {vocab}-token"
    ):
        WebDataModule(str(out / "train-*.tar"), vocab_size=999)


def test_causal_lm_sizes_itself_from_the_shards_and_rejects_a_smaller_vocabulary(shards, tmp_path) -> None:
    import lightning.pytorch as pl

    from kit.datamodules.webdataset import WebDataModule
    from kit.models.gpt import CausalLM
    from kit.nn import GPTConfig

    out, vocab = shards

    def fit(model_vocab: int | None) -> CausalLM:
        model = CausalLM(GPTConfig.from_name("debug", vocab_size=model_vocab, block_size=16), warmup_steps=1)
        dm = WebDataModule(str(out / "train-*.tar"), batch_size=4, shuffle_buffer=0)
        pl.Trainer(
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        ).fit(model, datamodule=dm)
        return model

    assert fit(None).config.vocab_size == vocab
    with pytest.raises(
        ValueError, match=rf"vocab_size=300 is smaller than the data's tokenizer \({vocab} tokens\)"
    ):
        fit(300)


def test_tokenizer_command_prints_the_saved_vocabulary(tmp_path, capsys) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    assert main(["tokenizer", str(corpus), "--vocab-sizes", "500", "--save", str(tmp_path / "t.json")]) == 0
    from tokenizers import Tokenizer

    real = Tokenizer.from_file(str(tmp_path / "t.json")).get_vocab_size()
    text = " ".join(capsys.readouterr().out.split())
    assert f"vocabulary {real:,} tokens; give the model vocab_size={real}" in text

"""``kit data clean|tokenizer|shards`` and the BPE trade-off report."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from kit.cli.commands.data import main
from kit.data.bpe_report import bpe_tradeoff, format_table, measure_tokenizer
from kit.data.text import embedded_corpus, iter_documents
from kit.data.tokenizer import train_bpe

DOCS = list(embedded_corpus().values())


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "raw.jsonl"
    with open(path, "w") as f:
        for text in DOCS[:30]:
            f.write(json.dumps({"text": "<p>" + text + "</p>"}) + "\n")
        f.write(json.dumps({"text": DOCS[3]}) + "\n")  # an exact duplicate
        f.write(json.dumps({"text": "too short"}) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"body": "no text field"}) + "\n")
    (tmp_path / "extra.txt").write_text(DOCS[40])
    return path


def test_iter_documents_streams_jsonl_and_text(corpus: Path):
    docs = list(iter_documents([str(corpus), str(corpus.parent / "*.txt")]))
    assert len(docs) == 33
    assert docs[-1][1] == DOCS[40] and docs[0][0].endswith("raw.jsonl:1")


def test_clean_writes_jsonl_and_report(corpus: Path, tmp_path: Path):
    out, rep = tmp_path / "out" / "clean.jsonl", tmp_path / "report.json"
    assert main(["clean", str(corpus), "-o", str(out), "--report", str(rep), "--examples", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    report = json.loads(rep.read_text())
    assert report["docs_in"] == 32 and report["docs_out"] == len(rows)
    assert report["removed"]["exact_dup"]["docs"] == 1
    assert report["removed"]["length:min_chars"]["docs"] == 1
    assert all("<p>" not in r["text"] for r in rows)
    assert report["minhash"]["bands"] == 14 and report["minhash"]["rows"] == 8
    assert report["examples"]["length:min_chars"] == ["too short"]


def test_clean_missing_input_is_an_error(tmp_path: Path):
    assert main(["clean", str(tmp_path / "nope-*.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2


def test_bpe_tradeoff_rows():
    rows = bpe_tradeoff(DOCS[::2], DOCS[1::8], [500, 2000], d_model=64)
    small, big = rows
    assert big["bytes_per_token"] > small["bytes_per_token"] > 1.0  # bigger vocab compresses more
    assert 0 < big["vocab_used_pct"] <= 100 and 0 < small["vocab_used_pct"] <= 100
    assert big["embedding_params"] == big["actual_vocab"] * 64
    assert "| vocab_size |" in format_table(rows)
    tok = train_bpe(DOCS[:10], vocab_size=400)
    m = measure_tokenizer(tok, ["hello world"])
    assert m["bytes"] == 11 and m["tokens"] >= 2
    with pytest.raises(ValueError, match="vocab_sizes"):
        bpe_tradeoff(DOCS, DOCS, [])


def test_tokenizer_command(corpus: Path, tmp_path: Path):
    rep, tok = tmp_path / "bpe.json", tmp_path / "tok.json"
    assert (
        main(
            [
                "tokenizer",
                str(corpus),
                "--vocab-sizes",
                "400,1500",
                "--d-model",
                "128",
                "--report",
                str(rep),
                "--save",
                str(tok),
            ]
        )
        == 0
    )
    rows = json.loads(rep.read_text())
    assert [r["vocab_size"] for r in rows] == [400, 1500]
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(tok)).get_vocab_size() <= 1500
    assert main(["tokenizer", "--vocab-sizes", "a,b"]) == 2


def test_shards_command_text_and_tokens(corpus: Path, tmp_path: Path):
    assert main(["shards", str(corpus), "-o", str(tmp_path / "txt"), "--max-count", "10"]) == 0
    txt = sorted((tmp_path / "txt").glob("*.tar"))
    assert len(txt) == 4
    samples = list(wds.DataPipeline(wds.SimpleShardList([str(p) for p in txt]), wds.tarfile_to_samples()))
    assert len(samples) == 32 and samples[0]["txt"].decode().startswith("<p>")

    tok = train_bpe(DOCS[:20], vocab_size=600)
    tok.save(str(tmp_path / "tok.json"))
    args = ["shards", str(corpus), "-o", str(tmp_path / "tok"), "--tokenizer", str(tmp_path / "tok.json")]
    assert main([*args, "--block-size", "32", "--prefix", "lm"]) == 0
    from kit.datamodules.webdataset import WebDataModule

    dm = WebDataModule(
        str(tmp_path / "tok" / "lm-*.tar"), batch_size=8, shuffle_buffer=0, shard_shuffle=False
    )
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (8, 32)
    assert (x[:, 1:] == y[:, :-1]).all()
    first = next(
        iter(
            wds.DataPipeline(
                wds.SimpleShardList(str(tmp_path / "tok" / "lm-000000.tar")), wds.tarfile_to_samples()
            )
        )
    )
    ids = np.load(io.BytesIO(first["input_ids.npy"]))
    assert ids.tolist()[:20] == tok.encode("<p>" + DOCS[0] + "</p>").ids[:20]


def test_module_runs_as_subprocess(corpus: Path, tmp_path: Path):
    out = tmp_path / "sub.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli.commands.data", "clean", str(corpus), "-o", str(out), "--no-near-dedup"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "documents: 32 in" in proc.stdout and out.exists()

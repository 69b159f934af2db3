"""One document reader and one packer: ``kit fit``, ``kit data`` and ``kit doctor`` read a ``.jsonl`` file
the same way and report its bad lines the same way; ``kit data shards`` writes ``pack_blocks``' rows."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from kit.cli.commands.data import main as data_main
from kit.cli.commands.doctor import main as doctor_main
from kit.data.packing import iter_blocks, pack_blocks
from kit.data.text import LoadReport, embedded_corpus, iter_documents, load_texts
from kit.data.tokenizer import EOS, train_bpe
from kit.datamodules.text import TextDataModule

DOCS = list(embedded_corpus().values())[:12]


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": t}) for t in DOCS[:6]]
    lines += ["{not json", json.dumps({"body": "no text field"}), ""]
    lines += [json.dumps({"text": t}) for t in DOCS[6:]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _expected(path: Path) -> LoadReport:
    report = LoadReport()
    assert len(list(iter_documents(path, report))) == len(DOCS)
    assert (report.invalid_json, report.missing_text, report.files) == (1, 1, 1)
    assert report.skipped_files == [f"{path}:7 (invalid JSON)", f"{path}:8 (no string 'text' field)"]
    return report


def test_fit_data_and_doctor_report_the_same_bad_lines(jsonl: Path, tmp_path: Path, capsys) -> None:
    expected = _expected(jsonl)
    line = expected.problems()
    assert line.startswith("skipped 1 invalid JSON line(s), 1 JSON record(s) without a string text field")

    # kit fit: TextDataModule through load_texts
    dm = TextDataModule(str(jsonl), vocab_size=300, block_size=16, batch_size=2, val_fraction=0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    assert dm.report.invalid_json == 1 and dm.report.missing_text == 1
    assert dm.report.documents == len(DOCS)
    assert any(str(w.message) == f"TextDataModule: {line}" for w in caught)

    # kit data clean: printed and in the JSON report
    capsys.readouterr()
    rep = tmp_path / "clean-report.json"
    assert data_main(["clean", str(jsonl), "-o", str(tmp_path / "c.jsonl"), "--report", str(rep)]) == 0
    assert f"input: {line}" in capsys.readouterr().out
    read = json.loads(rep.read_text())["input"]
    assert (read["invalid_json"], read["missing_text"], read["skipped_files"]) == (
        1,
        1,
        expected.skipped_files,
    )

    # kit doctor: a note on the report and on stdout
    ckpt = tmp_path / "empty.ckpt"
    torch.save({"global_step": 0}, ckpt)
    out = tmp_path / "doctor"
    args = ["--ckpt", str(ckpt), "--train-text", str(jsonl), "--val-text", str(jsonl), "--out", str(out)]
    doctor_main(args)
    stdout = capsys.readouterr().out
    assert f"note: --train-text: {line}" in stdout and f"note: --val-text: {line}" in stdout
    assert f"--train-text: {line}" in (out / "report.md").read_text()


def test_load_texts_counts_as_the_reader_does(jsonl: Path) -> None:
    docs, report = load_texts(jsonl)
    expected = _expected(jsonl)
    assert len(docs) == report.documents == len(DOCS)
    assert (report.invalid_json, report.missing_text, report.skipped_files) == (
        expected.invalid_json,
        expected.missing_text,
        expected.skipped_files,
    )
    assert report.bytes_read == jsonl.stat().st_size


def test_reports_merge() -> None:
    a = LoadReport(files=1, invalid_json=1, skipped_files=["a:1 (invalid JSON)"])
    a.merge(
        LoadReport(files=2, missing_text=1, empty_skipped=3, skipped_files=["b:2 (no string 'text' field)"])
    )
    assert (a.files, a.invalid_json, a.missing_text, a.empty_skipped) == (3, 1, 1, 3)
    assert len(a.skipped_files) == 2 and LoadReport().problems() is None


def test_shards_write_the_rows_pack_blocks_makes(jsonl: Path, tmp_path: Path) -> None:
    tok = train_bpe(DOCS, vocab_size=400)
    tok.save(str(tmp_path / "tok.json"))
    out = tmp_path / "shards"
    args = [
        "shards",
        str(jsonl),
        "-o",
        str(out),
        "--tokenizer",
        str(tmp_path / "tok.json"),
        "--block-size",
        "24",
    ]
    assert data_main(args) == 0
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    written = [
        np.load(io.BytesIO(s["input_ids.npy"])).tolist()
        for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    ]
    token_lists = [tok.encode(text).ids for _, text, _ in iter_documents(jsonl)]
    expected = pack_blocks(token_lists, 24, tok.token_to_id(EOS))
    assert torch.equal(torch.tensor(written), expected)


def test_streamed_rows_equal_packed_rows() -> None:
    docs = [[1, 2, 3], [], [4, 5, 6, 7, 8], [9]]
    for block in (1, 2, 3, 5):
        for eos in (None, 0):
            rows = list(iter_blocks(iter(docs), block, eos))
            assert torch.equal(torch.tensor(rows), pack_blocks(docs, block, eos))
    with pytest.raises(ValueError, match="block_size=0"):
        next(iter_blocks(docs, 0))

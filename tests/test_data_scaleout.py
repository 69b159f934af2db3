"""``clean_corpus`` / ``kit data clean --workers N``: same output as the streaming pipeline, any worker count."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kit.data.scaleout import CleanSettings, _iter_piece, _tasks, clean_corpus
from kit.data.text import LoadReport, embedded_corpus, iter_documents


def _perturb(text: str, rate: float, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
        words[i] = f"fresh{rng.randrange(10**9)}"
    return " ".join(words)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Four JSONL shards of pydoc paragraphs with exact and near duplicates planted across shards."""
    rng = random.Random(0)
    paras = [p for t in embedded_corpus().values() for p in t.split("\n\n") if len(p) > 400]
    docs = ["\n\n".join(paras[i : i + 3]) for i in range(0, len(paras) - 3, 3)][:240]
    originals = list(docs)
    for _ in range(40):  # exact copies (after normalisation: case and punctuation changes)
        docs.append(rng.choice(originals).upper().replace(".", " ."))
    for _ in range(40):  # near copies: 1 word in 100 changed
        docs.append(_perturb(rng.choice(originals), 0.01, rng))
    for _ in range(20):  # near copies of near copies
        docs.append(_perturb(rng.choice(docs[-40:]), 0.01, rng))
    rng.shuffle(docs)
    folder = tmp_path_factory.mktemp("shards")
    for s in range(4):
        part = docs[s::4]
        lines = [json.dumps({"text": t}) for t in part]
        lines.insert(3, "not json")  # counted by the reader in every mode
        (folder / f"part-{s}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _run_pipeline(folder: Path, settings: CleanSettings) -> tuple[list[dict], dict]:
    pipe = settings.pipeline()
    kept = []
    for name, text, _ in iter_documents(folder, text_key=settings.text_key):
        cleaned, reason = pipe.check(text)
        if reason is None:
            kept.append({"id": name, "text": cleaned})
    return kept, pipe.report.to_dict()


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("workers", [1, 2])
def test_same_output_as_streaming_pipeline(shards: Path, tmp_path: Path, workers: int):
    settings = CleanSettings(minhash={"seed": 3}, keep_examples=2)
    expected, expected_report = _run_pipeline(shards, settings)
    stats = clean_corpus(shards, tmp_path / "out.jsonl", settings, workers=workers, records_in_memory=500)
    assert _read(tmp_path / "out.jsonl") == expected
    assert stats.report.to_dict() == expected_report
    removed = stats.report.removed
    # cross-shard duplicates are caught: 40 exact copies (some also filtered) and most of the 60 near copies
    assert removed["exact_dup"] >= 30 and removed["near_dup"] >= 45, removed
    assert stats.reader.invalid_json == 4
    assert stats.bytes_per_doc() < 1024


def test_worker_counts_agree_without_verify_and_without_filters(shards: Path, tmp_path: Path):
    settings = CleanSettings(filters=[], minhash={"verify": False, "bands": 20, "rows": 5})
    outs = []
    for workers in (1, 3):
        clean_corpus(shards, tmp_path / f"o{workers}.jsonl", settings, workers=workers, records_in_memory=200)
        outs.append((tmp_path / f"o{workers}.jsonl").read_bytes())
    assert outs[0] == outs[1]
    assert _read(tmp_path / "o1.jsonl") == _run_pipeline(shards, settings)[0]


def test_bad_workers(tmp_path: Path):
    with pytest.raises(ValueError, match="workers=0"):
        clean_corpus(tmp_path, tmp_path / "o.jsonl", workers=0)


def test_cli_workers_flag(shards: Path, tmp_path: Path):
    from kit.cli.commands.data import main

    for workers in (1, 2):
        args = ["clean", str(shards), "-o", str(tmp_path / f"w{workers}.jsonl"), "--workers", str(workers)]
        assert main([*args, "--report", str(tmp_path / f"r{workers}.json")]) == 0
    assert (tmp_path / "w1.jsonl").read_bytes() == (tmp_path / "w2.jsonl").read_bytes()
    r1, r2 = (json.loads((tmp_path / f"r{w}.json").read_text()) for w in (1, 2))
    assert r1 == r2 and r1["removed"]["near_dup"]["docs"] > 0
    assert main(["clean", str(shards), "-o", str(tmp_path / "x.jsonl"), "--workers", "0"]) == 2


def _awkward_jsonl(path: Path) -> Path:
    """Lines of every kind the reader treats specially: blank, invalid JSON, no text, undecodable bytes."""
    rng = random.Random(5)
    lines: list[bytes] = []
    for i in range(300):
        kind = rng.random()
        if kind < 0.05:
            lines.append(b"")
        elif kind < 0.1:
            lines.append(b"not json")
        elif kind < 0.15:
            lines.append(b'{"body": "no text field"}')
        elif kind < 0.2:
            lines.append(b'{"text": "bad \xff byte ' + str(i).encode() + b'"}')
        else:
            lines.append(json.dumps({"text": f"document {i} " + "word " * rng.randrange(1, 80)}).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("piece_bytes", [1, 97, 1000, 5000, 10**9])
def test_pieces_read_like_the_whole_file(tmp_path: Path, piece_bytes: int):
    path = _awkward_jsonl(tmp_path / "a.jsonl")
    whole = LoadReport()
    expected = list(iter_documents(path, whole))
    tasks = _tasks([path], tmp_path, CleanSettings(), piece_bytes)
    assert (len(tasks) == 1) == (piece_bytes == 10**9)
    if piece_bytes == 1:
        assert len(tasks) >= 299  # a piece per line
    report, got = LoadReport(), []
    for task in tasks:
        got += list(_iter_piece(task, report, "text"))
    assert got == expected
    assert report == whole and report.invalid_json > 0 and report.replaced_bytes > 0


def test_pieces_and_workers_give_the_same_output(shards: Path, tmp_path: Path):
    settings = CleanSettings(minhash={"seed": 3}, keep_examples=2)
    expected, expected_report = _run_pipeline(shards, settings)
    outs = []
    for workers, piece in ((1, None), (2, 4000), (3, 20_000)):
        out = tmp_path / f"w{workers}.jsonl"
        stats = clean_corpus(shards, out, settings, workers=workers, records_in_memory=300, piece_bytes=piece)
        assert stats.report.to_dict() == expected_report and stats.reader.invalid_json == 4
        assert stats.shards == 4 and (stats.pieces > 4) == (piece is not None)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert _read(tmp_path / "w1.jsonl") == expected


def test_a_worker_error_reaches_the_caller(tmp_path: Path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "a b c " * 50}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "d e f " * 50}) + "\n")
    settings = CleanSettings(filters=[_explode])
    with pytest.raises(RuntimeError, match="filter failed"):
        clean_corpus(tmp_path, tmp_path / "out" / "o.jsonl", settings, workers=2)


def _explode(text: str) -> bool:
    raise RuntimeError("filter failed on purpose")

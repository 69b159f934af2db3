"""The kit's cleaning and filters as datatrove steps give the kit's own decisions (skips without datatrove)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datatrove")

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from kit.data.datatrove_steps import KitCleaner, KitFilter, KitMinhashSignature, kit_minhash_config
from kit.data.dedup import fingerprint
from kit.data.minhash import MinHasher
from kit.data.pipeline import DataPipeline
from kit.data.text import embedded_corpus


def test_kit_steps_on_datatrove_executor_match_data_pipeline(tmp_path: Path):
    texts = [f"<p>{t}</p>" for t in embedded_corpus().values()] + ["", "<b> </b>"]
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "docs.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "id": str(i)}) + "\n")
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(tmp_path / "in")),
            KitCleaner(),
            KitFilter(),
            JsonlWriter(str(tmp_path / "out")),
        ],
        tasks=1,
        workers=1,
        logging_dir=str(tmp_path / "logs"),
    ).run()
    got = []
    for path in sorted((tmp_path / "out").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            got += [json.loads(line)["text"] for line in f]
    expected, report = DataPipeline(exact_dedup=False, near_dedup=False).run(texts)
    assert got == expected
    assert 0 < len(got) < len(texts) and report.removed  # some documents really were filtered


def test_minhash_config_carries_kit_bands():
    cfg = kit_minhash_config()
    assert (cfg.n_grams, cfg.num_buckets, cfg.hashes_per_bucket) == (5, 14, 8)


def _run(pipeline: list, tmp_path: Path, name: str, tasks: int = 1) -> None:
    LocalPipelineExecutor(
        pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(tmp_path / "logs" / name)
    ).run()


def test_kit_minhash_signature_drives_datatrove_dedup_stages(tmp_path: Path):
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter

    rng = random.Random(0)
    base = [" ".join(f"w{rng.randrange(10**6)}" for _ in range(200)) for _ in range(40)]
    near = [t.replace(t.split()[100], "changed") for t in base[:10]]  # one word: Jaccard ~0.95
    texts = base + near
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "docs.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "id": str(i)}) + "\n")
    cfg = kit_minhash_config(precision=32)
    sigs, buckets, remove = (str(tmp_path / d) for d in ("sigs", "buckets", "remove"))
    _run([JsonlReader(str(tmp_path / "in")), KitMinhashSignature(sigs, cfg, batch_size=7)], tmp_path, "s1")
    # the files hold the kit's signatures: band 0's rows of each document, sorted by hash
    records = np.fromfile(tmp_path / "sigs" / "bucket_000" / "00000.minhash.sig", dtype="<u4").reshape(-1, 9)
    expected = MinHasher().signatures([fingerprint(t)[0] for t in texts])[:, :8]
    np.testing.assert_array_equal(records[:, :8], expected[records[:, 8]])
    assert sorted(records[:, 8].tolist()) == list(range(len(texts)))
    _run([MinhashDedupBuckets(sigs, buckets, config=cfg)], tmp_path, "s2", tasks=cfg.num_buckets)
    _run([MinhashDedupCluster(buckets, remove, config=cfg)], tmp_path, "s3")
    _run(
        [JsonlReader(str(tmp_path / "in")), MinhashDedupFilter(remove), JsonlWriter(str(tmp_path / "out"))],
        tmp_path,
        "s4",
    )
    kept = []
    for path in sorted((tmp_path / "out").glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            kept += [json.loads(line)["text"] for line in f]
    assert kept == base  # each near copy removed, every distinct text kept


def test_kit_minhash_signature_needs_32_bit_config():
    with pytest.raises(ValueError, match="precision=64"):
        KitMinhashSignature("unused", kit_minhash_config())

"""The kit's cleaning and filters as datatrove steps give the kit's own decisions (skips without datatrove)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from kit.data.datatrove_steps import KitCleaner, KitFilter, kit_minhash_config
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

"""The GPU performance suite's script (issue 15) runs end to end on CPU in its smoke mode, so a session that is
lent a GPU spends its device minutes measuring, not debugging the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_perf_smoke_writes_one_table_with_every_case_it_ran(tmp_path):
    cases = ["raw", "trainer", "ac-ffn", "moe"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_perf.py", "--out", str(tmp_path), "--smoke", "--steps", "3",
         "--warmup", "1", "--cases", *cases],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_perf.json").read_text())
    rows = {r["case"]: r for r in result["rows"]}
    assert set(rows) == set(cases) and not result["errors"]
    assert rows["raw"]["runs"] == rows["trainer"]["runs"] == 2  # raw and trainer run twice, ABBA
    assert rows["raw"]["vs_raw"] == 1.0
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
    assert result["torch"] and result["lightning"]
    assert "| trainer |" in (tmp_path / "gpu_perf.md").read_text()


@pytest.mark.slow
def test_gpu_checkpoint_smoke_runs_the_async_sharded_test_worker(tmp_path):
    """benchmarks/gpu_checkpoint.py loads tests/test_checkpoint_async_sharded.py outside pytest, so the test's
    `from conftest import ...` must resolve there too (it did not, once)."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_checkpoint.py", "--out", str(tmp_path), "--smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "PASS: async sharded KitCheckpoint" in proc.stdout
    assert (tmp_path / "gpu_checkpoint.json").is_file()

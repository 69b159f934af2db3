"""Every DDP comm hook trains the kit's GPT in 2 gloo processes on CPU; bytes and loss vs dense all-reduce.

Runs ``python -m benchmarks compression`` (the same code the benchmark table comes from) in a subprocess,
so the spawned workers import the repository exactly as a user's run would.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str, timeout: int = 240) -> dict[str, dict]:
    out = tmp_path / "raw.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "compression",
        "--out",
        str(tmp_path),
        "--json",
        str(out),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.distributed
def test_every_hook_trains_and_cuts_bytes(tmp_path: Path) -> None:
    res = _run(tmp_path, "--steps", "20", "--start-iter", "5")
    assert set(res) == {"allreduce", "fp16", "bf16", "powersgd", "topk", "1bit", "1bit-adam"}
    dense = res["allreduce"]
    for name, r in res.items():
        assert r["replicas_in_sync"], name  # every worker applied the same averaged gradient
        assert r["val_loss"] < math.log(256) - 1.0, (name, r["val_loss"])  # it learned something
    assert dense["bytes_cut_total"] == 0.0
    assert res["fp16"]["bytes_cut_total"] == pytest.approx(0.5)
    assert res["bf16"]["bytes_cut_total"] == pytest.approx(0.5)
    assert res["topk"]["bytes_cut_total"] >= 0.9
    assert res["1bit"]["bytes_cut_total"] >= 0.9
    assert res["1bit-adam"]["bytes_cut_steady"] >= 0.96  # after freeze_step (20 // 8 = 2 dense steps)
    assert res["powersgd"]["bytes_cut_steady"] >= 0.9  # rank 4 on d=128 matrices, after the dense start
    # fp16 keeps 11 mantissa bits and stays within 2% of dense. bf16 keeps 8: on this 20-step tiny run its
    # rounding moves the trajectory more (measured 3.12 vs dense 3.37 after the head-major QKV change of
    # issue 10, which changed what the seeded init computes; 2% before it), so its bound is 10%.
    assert res["fp16"]["val_loss"] == pytest.approx(dense["val_loss"], rel=0.02)
    assert res["bf16"]["val_loss"] == pytest.approx(dense["val_loss"], rel=0.10)
    assert (tmp_path / "compression.png").stat().st_size > 0  # the loss curves, beside the table


def _published_seed0_ratios(name: str) -> dict[str, float]:
    """Each method's seed-0 ``loss / dense`` in a published compression table (``benchmarks/results/<name>.json``)."""
    table = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
    return {row["method"]: float(row["loss / dense per seed"].split(" / ")[0]) for row in table["rows"]}


@pytest.mark.slow
@pytest.mark.distributed
def test_seed_claim_with_momentum_sgd_reproduces_the_published_seed_0(tmp_path: Path) -> None:
    """The seed's claim with momentum SGD (lr 0.05, 600 steps, W=2): >= 90% fewer bytes and the held-out loss
    within 5% of dense for PowerSGD, top-k 3% and 1-bit, and seed 0 reproduces its row of the published
    three-seed table (compression-sgd600-lr05-w2.md, every seed within 3.3%; `docs/benchmarks.md` has its
    command). Seeds 1 and 2 are the benchmark's, not CI's: all three cost 400 s alone and 940 s beside the
    other CI worker, seed 0 a third of that, and the 1-bit Adam tests below check seed 0 of theirs the same
    way. Not at W=4, where only PowerSGD holds (README), nor at lr 0.1, where one seed in three of each
    method blows up."""
    res = _run(
        tmp_path, "--steps", "600", "--hooks", "allreduce,powersgd,topk,1bit", "--dense-start", "5",
        "--optimizer", "sgd", "--lr", "0.05", "--ratio", "0.03", "--seeds", "0", "--no-plot", timeout=1800,
    )  # fmt: skip
    published = _published_seed0_ratios("compression-sgd600-lr05-w2")
    dense = res["allreduce"]["val_loss"]
    for name in ("powersgd", "topk", "1bit"):
        ratio = res[name]["val_loss"] / dense
        assert res[name]["replicas_in_sync"], name  # every worker applied the same averaged update
        assert res[name]["bytes_cut_total"] >= 0.9, name
        assert ratio <= 1.05, (name, ratio)
        assert ratio == pytest.approx(published[name], abs=0.01), (name, ratio, published[name])


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("world", [4])
def test_seed_claim_with_onebit_adam(tmp_path: Path, world: int) -> None:
    """The seed's claim for AdamW with 1-bit Adam, on the benchmark's defaults (gpt-tiny's LR shape: linear
    warm-up over the first 1/6 of the steps, cosine to 0.1x): >= 90% fewer wire bytes than dense AdamW over
    the compression stage (96.9%) and the held-out loss within 5% of dense AdamW after 600 steps with
    freeze_step 75 (12.5%). Seed 0 reproduces its row of the published three-seed table (compression-w4.md).
    CI runs W=4, the harder case (seed 0: 1.041 of dense, against 1.019 at W=2) and the same code as W=2; W=2
    (compression-w2.md) reproduced its row too when run with ``world`` 2, but costs CI another 165 s of one
    worker's time, and the default suite runs 1-bit Adam at W=2 (``test_every_hook_trains_and_cuts_bytes``)."""
    res = _run(
        tmp_path, "--world", str(world), "--steps", "600", "--freeze-step", "75", "--hooks", "allreduce,1bit-adam",
        "--no-plot", timeout=3600,
    )  # fmt: skip
    dense, onebit = res["allreduce"], res["1bit-adam"]
    assert onebit["replicas_in_sync"]
    assert onebit["bytes_cut_steady"] >= 0.9
    assert onebit["bytes_cut_total"] >= 0.9 * (1 - 75 / 600)  # the warm-up is dense
    assert onebit["val_loss"] <= 1.05 * dense["val_loss"], (onebit["val_loss"], dense["val_loss"])
    published = _published_seed0_ratios(f"compression-w{world}")["1bit-adam"]
    assert onebit["val_loss"] / dense["val_loss"] == pytest.approx(published, abs=0.01), published

"""Byte accounting against real gloo runs at W=2 and W=4: what CommStats counts is what goes into the collectives.

Each worker wraps ``dist.all_reduce`` / ``all_gather`` / ``all_to_all_single`` and records the bytes of the
tensor it passes in; this test turns those into wire bytes with its own copy of the textbook formulas
(ring all-reduce 2(W-1)/W B, ring all-gather (W-1) B, pairwise all-to-all (W-1)/W B) and compares them with
``CommStats.sent``, the dense baseline with ``CommStats.dense``, and both with the closed-form
:func:`kit.parallel.compression.method_wire_bytes` the paper table is computed from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit.parallel.compression import method_wire_bytes

STEPS = 3
HERE = Path(__file__).resolve().parent


def _wire(kind: str, nbytes: int, world: int) -> float:
    return {
        "all_reduce": 2 * (world - 1) / world * nbytes,
        "all_gather": (world - 1) * nbytes,
        "all_to_all": (world - 1) / world * nbytes,
    }[kind]


@pytest.fixture(scope="module", params=[2, 4], ids=["W2", "W4"])
def run(request, tmp_path_factory) -> tuple[int, dict]:
    world = request.param
    out = tmp_path_factory.mktemp(f"wire{world}") / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "_dist_wire.py"), str(world), str(out), str(STEPS)],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(Path(out).read_text())
    return world, {(r["name"], r.get("kwargs", {}).get("scheme", "")): r for r in results}


@pytest.mark.distributed
def test_commstats_equals_the_bytes_passed_to_each_collective(run) -> None:
    world, results = run
    for key, r in results.items():
        if "calls" not in r:
            continue
        assert r["calls"], key  # something was communicated
        assert r["sent"] == pytest.approx(sum(_wire(k, b, world) for k, b in r["calls"])), key
        assert r["dense"] == pytest.approx(STEPS * 2 * (world - 1) / world * 4 * r["numel"]), key
        assert r["in_sync"], key  # every worker applied the same update


@pytest.mark.distributed
def test_closed_form_matches_the_measured_bytes(run) -> None:
    world, results = run
    n = results[("allreduce", "")]["numel"]
    per_step = {key: r["sent"] / STEPS for key, r in results.items() if "sent" in r}
    assert per_step[("allreduce", "")] == pytest.approx(method_wire_bytes("dense", n, world))
    assert per_step[("fp16", "")] == pytest.approx(method_wire_bytes("fp16", n, world))
    assert per_step[("1bit", "2phase")] == pytest.approx(method_wire_bytes("1bit-2phase", n, world))
    assert per_step[("topk", "2phase")] == pytest.approx(method_wire_bytes("topk-2phase", n, world, 0.05))
    assert per_step[("topk", "allgather")] == pytest.approx(
        method_wire_bytes("topk-allgather", n, world, 0.05)
    )
    # 4 parameter tensors, one scale each
    assert per_step[("1bit", "allgather")] == pytest.approx(
        method_wire_bytes("1bit-allgather", n, world, n_scales=4)
    )
    # 1-bit Adam, freeze_step=1: one dense step, then the momentum's two-phase all-reduce only
    adam = results[("1bit-adam", "")]
    expected = method_wire_bytes("dense", n, world) + (STEPS - 1) * method_wire_bytes("1bit-2phase", n, world)
    assert adam["sent"] == pytest.approx(expected)
    assert [k for k, _ in adam["calls"]] == ["all_reduce"] + ["all_to_all", "all_gather"] * (STEPS - 1)


@pytest.mark.distributed
def test_two_phase_error_feedback_conserves_the_average(run) -> None:
    """mean of inputs summed over steps == outputs summed + mean worker error + server error (both buffers)."""
    _, results = run
    for name in ("conserve-SignCodec", "conserve-TopKCodec"):
        assert results[(name, "")]["gap"] < 1e-5, results[(name, "")]

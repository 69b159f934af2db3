"""Exact resume after a crash or preemption: a training subprocess is killed (SIGKILL) or preempted (SIGTERM)
at a random step, a second run resumes from the newest good checkpoint, and the final weights are bitwise
identical to an uninterrupted run's, with the same batch sequence (tests/resume_script.py is the run)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import signal_after_steps

SCRIPT = Path(__file__).with_name("resume_script.py")
ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *args], env=env, capture_output=True, text=True, timeout=600
    )


def _steps(out: Path) -> dict[int, list[int]]:
    """step -> batch ids; a resumed run's records replace the killed run's from the resume step on."""
    seen: dict[int, list[int]] = {}
    for line in (out / "record.jsonl").read_text().splitlines():
        row = json.loads(line)
        seen[row["step"]] = row["ids"]
    return seen


def _interrupt(out: Path, sig: int, at_step: int, *args: str) -> int:
    """Start a run, send ``sig`` once it has recorded ``at_step`` steps; returns its exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), "--step-sleep", "0.05", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = signal_after_steps(proc, out / "record.jsonl", at_step, sig)
    assert proc.returncode is not None
    (out / "interrupted.log").write_text(output)
    return proc.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    cache: dict[str, Path] = {}

    def get(data: str, *args: str) -> Path:
        key = data + " ".join(args)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ref-{data}")
            done = _run(out, "--data", data, *args)
            assert done.returncode == 0, done.stderr[-3000:]
            cache[key] = out
        return cache[key]

    return get


def _check_same(ref: Path, out: Path) -> None:
    a, b = (torch.load(d / "final.pt", weights_only=True) for d in (ref, out))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert _steps(ref) == _steps(out)


def _kill_and_resume(reference, tmp_path: Path, sig: int, data: str = "plain", *args: str) -> str:
    ref = reference(data, *args)
    at = random.Random(os.getpid()).randint(4, 20)
    code = _interrupt(tmp_path, sig, at, "--data", data, *args)
    log = (tmp_path / "interrupted.log").read_text()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, log[-2000:]
    else:
        assert code == 0, log[-2000:]
        assert "Resume with" in log and "SIGTERM" in log, log[-2000:]
    done = _run(tmp_path, "--data", data, "--resume", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["resumed_from"], "the second run found no checkpoint to resume from"
    _check_same(ref, tmp_path)
    return log


def test_sigkill_at_random_step_resumes_bitwise(reference, tmp_path):
    _kill_and_resume(reference, tmp_path, signal.SIGKILL)


def test_a_blocked_rank_exits_after_the_hang_timeout_with_a_message(tmp_path):
    start = time.monotonic()
    done = _run(tmp_path, "--hang-at", "5", "--hang-timeout", "2")
    assert done.returncode == 3, done.stderr[-2000:]
    assert "no training step finished" in done.stderr and "--ckpt_path last" in done.stderr
    assert "step00000004.ckpt" in done.stderr or "last.ckpt" in done.stderr
    assert time.monotonic() - start < 300


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes_bitwise(reference, tmp_path):
    _kill_and_resume(reference, tmp_path, signal.SIGTERM)


@pytest.mark.slow
def test_temperature_sampled_run_resumes_bitwise(reference, tmp_path):
    _kill_and_resume(reference, tmp_path, signal.SIGKILL, "temperature")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    from kit.data.shards import write_shards

    folder = tmp_path_factory.mktemp("shards")
    write_shards(
        ({"__key__": f"s_{i}", "txt": str(i)} for i in range(96)), str(folder / "train-%03d.tar"), 16
    )
    return str(folder / "train-{000..005}.tar")


@pytest.mark.slow
def test_webdataset_run_resumes_bitwise(reference, shards, tmp_path):
    _kill_and_resume(reference, tmp_path, signal.SIGKILL, "webdataset", "--shards", shards)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_unsized_webdataset_stream_resumes_bitwise(reference, shards, tmp_path, workers):
    """No epoch_length: Lightning fetches a batch ahead of the unsized stream; the saved state must not include it.

    30 steps over 12-batch epochs: the kill lands before or after an epoch boundary, and the resumed run also
    crosses one (detshuffle's seed + epoch must come back). With 2 workers each reader resumes its own shards.
    """
    args = ("--shards", shards, "--epoch-length", "0", "--workers", str(workers))
    _kill_and_resume(reference, tmp_path, signal.SIGKILL, "webdataset", *args)

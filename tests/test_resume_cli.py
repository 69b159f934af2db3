"""``kit fit --ckpt_path last`` resumes exactly: a CLI run of the real ``gpt-tiny`` recipe (shrunk, deterministic)
is killed mid-run, ``kit fit --config <same> --ckpt_path last`` finishes it in a new version folder, and the final
weights and optimizer state are bitwise equal to an uninterrupted CLI run's, with the same batch sequence.

The shrunk recipe crosses two epoch boundaries (``limit_train_batches=6``) and validates mid-epoch, so the
sampler's epoch reseeding, the dropout RNG around validation, the LR schedule and every callback's state
all have to come back. ``tests/_cli_record.py`` is the batch recorder the recipe gains.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import signal_after_steps

from kit.cli.main import resolve_recipe

TESTS = Path(__file__).resolve().parent
MAX_STEPS = 16


def _recipe(path: Path) -> Path:
    """gpt-tiny as shipped, shrunk: 16 steps, epochs of 6 batches, a checkpoint every 2 steps, a batch recorder."""
    cfg = yaml.safe_load(Path(resolve_recipe("gpt-tiny")).read_text())
    trainer = cfg["trainer"]
    trainer.update(
        max_steps=MAX_STEPS,
        val_check_interval=5,
        limit_val_batches=2,
        limit_train_batches=6,
        log_every_n_steps=1,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    ckpts = [cb for cb in trainer["callbacks"] if cb["class_path"].endswith("KitCheckpoint")]
    assert len(ckpts) == 1, "gpt-tiny should configure one KitCheckpoint"
    ckpts[0]["init_args"]["every_n_train_steps"] = 2
    trainer["callbacks"].append({"class_path": "_cli_record.BatchLog", "init_args": {"path": "record.jsonl"}})
    model = cfg["model"]["init_args"]
    model["config"].update(n_layer=1, n_embd=32, n_head=2, block_size=32)
    model["warmup_steps"] = 2
    cfg["data"]["init_args"].update(vocab_size=300, block_size=32, batch_size=4)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _fit(cwd: Path, config: Path, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", "fit", "--config", str(config), *extra],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"kit fit failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _rows(cwd: Path) -> list[dict]:
    return [json.loads(line) for line in (cwd / "record.jsonl").read_text().splitlines()]


def _interrupt(cwd: Path, config: Path, sig: int, at_step: int) -> tuple[int, str]:
    """Start ``kit fit``; once it has started ``at_step`` steps, send ``sig``. Returns (exit code, output)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kit.cli",
            "fit",
            "--config",
            str(config),
            "--trainer.callbacks.init_args.step_sleep=0.25",
        ],  # the recorder is the last callback
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = signal_after_steps(proc, cwd / "record.jsonl", at_step, sig)
    return proc.returncode, output


def _final(cwd: Path) -> dict:
    """The newest version folder's last.ckpt (the resumed run's)."""
    versions = sorted(cwd.glob("runs/gpt-tiny/version_*"), key=lambda p: int(p.name.split("_")[1]))
    return torch.load(versions[-1] / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("cli-ref")
    _fit(cwd, _recipe(cwd / "recipe.yaml"))
    return cwd


def _kill_and_resume(reference: Path, tmp_path: Path, sig: int) -> None:
    config = _recipe(tmp_path / "recipe.yaml")
    at = random.Random(os.getpid()).randint(3, MAX_STEPS - 3)
    code, log = _interrupt(tmp_path, config, sig, at)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, log[-2000:]
    else:
        assert code == 0 and "received SIGTERM" in log and "--ckpt_path last" in log, log[-2000:]
    killed = _rows(tmp_path)
    out = _fit(tmp_path, config, "--ckpt_path", "last")
    line = next(li for li in out.splitlines() if li.startswith("kit: --ckpt_path last -> "))
    resumed_from = torch.load(tmp_path / line.split(" -> ", 1)[1], weights_only=True)
    assert "runs/gpt-tiny/version_0/checkpoints/" in line  # the killed run's folder
    assert (
        tmp_path / "runs/gpt-tiny/version_1/checkpoints/last.ckpt"
    ).exists()  # the resumed run's own folder

    # the batches: what the killed run trained on before its checkpoint, then the resumed run's, in order
    start = resumed_from["global_step"]
    assert 0 < start <= MAX_STEPS
    rows = _rows(tmp_path)
    resumed = rows[len(killed) :]
    assert resumed[0]["step"] == start, "the resumed run did not continue from the checkpoint's step"
    seen = [r for r in killed if r["step"] < start] + resumed
    assert seen == _rows(reference)

    # the weights and the optimizer state
    a, b = _final(reference), _final(tmp_path)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), f"{key} differs after resume"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), (
                f"optimizer {name} differs"
            )
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_kit_fit_killed_then_ckpt_path_last_resumes_bitwise(reference, tmp_path):
    _kill_and_resume(reference, tmp_path, signal.SIGKILL)


@pytest.mark.slow
def test_kit_fit_sigterm_then_ckpt_path_last_resumes_bitwise(reference, tmp_path):
    _kill_and_resume(reference, tmp_path, signal.SIGTERM)

"""The `kit` command end to end: recipes, fit, validate on the checkpoint, resume, wandb offline."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kit.cli.main import _rewrite_args, list_recipes, main, resolve_recipe

# tiny, fast overrides of the default recipe for subprocess runs
FAST = [
    "--trainer.max_steps=6",
    "--trainer.val_check_interval=3",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=1",
    "--model.init_args.config.n_layer=1",
    "--model.init_args.config.n_embd=32",
    "--model.init_args.config.n_head=2",
    "--model.init_args.config.block_size=32",
    "--model.init_args.warmup_steps=2",
    "--data.init_args.vocab_size=300",
    "--data.init_args.block_size=32",
    "--data.init_args.batch_size=4",
]


def kit(
    args: list[str], cwd: Path, env_extra: dict | None = None, timeout: int = 240, check: bool = True
) -> subprocess.CompletedProcess:
    """``python -m kit.cli ARGS`` in ``cwd``; with ``check`` (default) the run must exit 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert not check or proc.returncode == 0, (
        f"kit {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def test_recipes_are_listed_and_resolved_by_name(capsys) -> None:
    recipes = list_recipes()
    assert {"gpt-tiny", "seed-recipe"} <= set(recipes)
    assert all(recipes.values()), "every recipe needs a '# description:' line"
    assert resolve_recipe("gpt-tiny").endswith("kit/cli/recipes/gpt-tiny.yaml")
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    # each recipe with its base ("-" for one that stands alone) and its description
    assert re.search(r"^  gpt-tiny +- +tiny GPT", listed, re.M)
    assert re.search(r"^  gpt-tiny-moe +gpt-tiny +gpt-tiny with a Switch MoE", listed, re.M)
    assert re.search(r"^  classifier-lora +classifier-finetune +stage 2, LoRA", listed, re.M)
    with pytest.raises(SystemExit, match="neither a file nor a packaged recipe; recipes: "):
        resolve_recipe("no-such-recipe")


def test_bench_and_help_subcommands(capfd) -> None:
    assert main(["bench"]) == 0
    listed = capfd.readouterr().out
    assert "throughput" in listed and "gpu_suite" not in listed
    assert main(["--help"]) == 0
    help_text = capfd.readouterr().out
    assert "bench NAME" in help_text and "recipes" in help_text and "plan" in help_text


def test_fit_without_config_gets_the_default_recipe() -> None:
    assert _rewrite_args(["fit"])[:3] == ["fit", "--config", resolve_recipe("gpt-tiny")]
    assert _rewrite_args(["fit", "-c", "seed-recipe"]) == ["fit", "-c", resolve_recipe("seed-recipe")]
    # an overlay's name expands to its base's file and then its own
    assert _rewrite_args(["fit", "-c", "gpt-tiny-moe"]) == [
        "fit", "-c", resolve_recipe("gpt-tiny"), "-c", resolve_recipe("gpt-tiny-moe")
    ]  # fmt: skip
    assert "--config" not in _rewrite_args(["fit", "--model=MyModel"])


def test_print_config_shows_every_knob(tmp_path) -> None:
    out = kit(["fit", "--config", "seed-recipe", "--print_config"], tmp_path).stdout
    for knob in (
        "label_smoothing: 0.1",
        "lr: 3.0e-05",
        "max_norm: 1.0",
        "activation_checkpointing: false",
        "vocab_size: 2048",
        "warmup_steps: 60",
    ):
        assert knob in out, knob


def _metrics(log_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(log_dir.rglob("metrics.csv")):
        with path.open() as f:
            rows += list(csv.DictReader(f))
    return rows


def test_fit_then_validate_then_resume_from_last(tmp_path) -> None:
    out = kit(["fit", *FAST], tmp_path).stdout
    assert "kit fit finished" in out and "unigram baseline val loss" in out and "sample:" in out
    last = tmp_path / "runs/gpt-tiny/version_0/checkpoints/last.ckpt"
    assert last.exists()
    assert torch.load(last, weights_only=True)["global_step"] == 6
    rows = _metrics(tmp_path / "runs")
    assert any(r.get("val/loss") for r in rows) and any(r.get("train/ppl") for r in rows)

    out = kit(["validate", *FAST, "--ckpt_path", str(last)], tmp_path).stdout
    assert "val/loss" in out
    out = kit(["test", *FAST, "--ckpt_path", str(last)], tmp_path).stdout
    assert "test/ppl" in out

    out = kit(["fit", *FAST, "--trainer.max_steps=10", "--ckpt_path", "last"], tmp_path).stdout
    assert "--ckpt_path last -> runs/gpt-tiny/version_0/checkpoints/" in out  # newest complete, any version
    # each run (validate and test too) has its own logger version; the resumed fit wrote into the newest
    resumed = max(
        tmp_path.glob("runs/gpt-tiny/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
    )
    assert resumed != last
    assert torch.load(resumed, weights_only=True)["global_step"] == 10
    assert torch.load(last, weights_only=True)["global_step"] == 6
    steps = [int(r["step"]) for r in _metrics(tmp_path / "runs") if r.get("train/loss")]
    assert max(steps) >= 9 and min(s for s in steps if s >= 6) >= 6


def test_wandb_logger_runs_offline_and_writes_its_run_dir_without_a_progress_bar(tmp_path) -> None:
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "", "HOME": str(tmp_path), "WANDB_DIR": str(tmp_path)}
    env = {k: v for k, v in env.items() if v} | {"WANDB_SILENT": "true"}
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        os.environ.pop(key, None)
    kit(
        [
            "fit",
            *FAST,
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.save_dir",
            str(tmp_path),
            "--trainer.logger.project=kit-test",
        ],
        tmp_path,
        env,
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, f"no offline run dir in {list(tmp_path.rglob('*'))[:20]}"
    assert any(p.suffix == ".wandb" for p in runs[0].iterdir())


@pytest.mark.distributed
def test_console_script_launches_two_ddp_processes_with_a_preset(tmp_path) -> None:
    """Lightning re-runs `python sys.argv[0] ...` per rank: argv[0] must stay the real `kit` script."""
    script = Path(sys.executable).with_name("kit")
    if not script.exists():
        pytest.skip("the kit console script is not installed next to this interpreter")
    args = [str(script), "fit", *FAST, "--trainer.max_steps=4", "--trainer.val_check_interval=2"]
    args += ["--trainer.strategy=ddp-topk", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    assert "kit fit finished" in proc.stdout

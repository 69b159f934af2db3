"""Training throughput: the kit's ``CausalLM`` through the Lightning Trainer vs a plain PyTorch loop.

Both sides train the same model (same init), on the same batches, with the same optimizer, schedule,
precision and compile setting, in one process, one after the other; the Trainer side pays for hooks,
logging and metric updates. Steps after ``--warmup`` are timed (CUDA synchronised), tokens/s reported for
both, and their ratio. CPU default: the tiny config. With CUDA: GPT-2 124M, bf16, compiled.

    python -m benchmarks throughput                 # auto: tiny on CPU, gpt2 on CUDA
    python -m benchmarks throughput --config debug --steps 10 --warmup 2
"""

from __future__ import annotations

import argparse
import itertools
import time

import lightning.pytorch as pl
import torch

from benchmarks._common import cuda_sync, device_name, progress
from kit.datamodules.text import TextDataModule
from kit.models.gpt import CausalLM
from kit.nn import GPTConfig

PRESETS = {
    # name: (model overrides, data vocab, block, batch, precision, compile)
    "debug": ({}, 300, 16, 8, "32-true", False),
    "tiny": ({}, 2048, 128, 16, "32-true", False),
    "gpt2": ({"vocab_size": 50304}, 8192, 1024, 16, "bf16-mixed", True),
}


class _StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = None
        self.end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            cuda_sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        cuda_sync()
        self.end = time.perf_counter()


def _make_module(config: GPTConfig, args) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(config, lr=args.lr, warmup_steps=args.warmup, max_steps=args.steps, compile=args.compile)


def run_trainer(config, loader, args) -> float:
    module = _make_module(config, args)
    timer = _StepTimer(args.warmup)
    trainer = pl.Trainer(
        max_steps=args.steps,
        precision=args.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        accelerator="auto",
        devices=1,
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.end - timer.start


def run_plain(config, loader, args) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = _make_module(config, args).to(device)
    module.train()
    opt_cfg = module.configure_optimizers()  # same groups, fused flag and schedule as the Trainer side
    optimizer, scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    batches = itertools.cycle(loader)
    start = None
    for step in range(args.steps):
        if step == args.warmup:
            cuda_sync()
            start = time.perf_counter()
        x, y = (t.to(device, non_blocking=True) for t in next(batches))
        with autocast:
            loss = module._loss((x, y), module.hparams.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    cuda_sync()
    return time.perf_counter() - start


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks throughput", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--config", choices=sorted(PRESETS), default=None, help="default: gpt2 on CUDA, else tiny"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="total steps per side (default 60 CPU, 80 CUDA)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 10 CPU, 30 CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two sides this many times")
    parser.add_argument("--lr", type=float, default=6e-4)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.config = args.config or ("gpt2" if cuda else "tiny")
    overrides, vocab, block, batch, precision, compile_ = PRESETS[args.config]
    args.steps = args.steps or (80 if cuda else 60)
    args.warmup = args.warmup if args.warmup is not None else (30 if cuda else 10)
    if args.warmup >= args.steps:
        raise SystemExit(f"--warmup={args.warmup} must be below --steps={args.steps}")
    args.precision, args.compile = precision, compile_ and cuda
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    dm = TextDataModule(vocab_size=vocab, block_size=block, batch_size=batch)
    dm.setup("fit")
    base = "debug" if args.config == "debug" else ("gpt2" if args.config == "gpt2" else "tiny")
    config = GPTConfig.from_name(base, block_size=block, **{"vocab_size": dm.vocab_size, **overrides})
    loader = dm.train_dataloader()
    tokens = (args.steps - args.warmup) * batch * block

    rows, trainer_times, plain_times = [], [], []
    for repeat in range(args.repeats):
        # alternate the order so warm caches or clocks favour neither side
        order = [("plain", run_plain), ("trainer", run_trainer)]
        if repeat % 2:
            order.reverse()
        for name, fn in order:
            progress(f"{name} (repeat {repeat + 1}/{args.repeats})")
            seconds = fn(config, loader, args)
            (trainer_times if name == "trainer" else plain_times).append(seconds)
            rows.append(
                {"repeat": repeat, "side": name, "seconds": round(seconds, 3), "tokens/s": tokens / seconds}
            )
    best_trainer, best_plain = min(trainer_times), min(plain_times)
    ratio = best_plain / best_trainer
    rows.append({"repeat": "best", "side": "trainer / plain tokens/s", "seconds": "", "tokens/s": ratio})
    model_params = sum(p.numel() for p in CausalLM(config).parameters())
    return {
        "title": f"Training throughput: CausalLM via Lightning Trainer vs plain PyTorch loop ({args.config})",
        "device": device_name(),
        "config": {
            "preset": args.config,
            "params": model_params,
            "batch": batch,
            "block": block,
            "precision": precision,
            "compile": args.compile,
            "steps": args.steps,
            "warmup": args.warmup,
        },
        "rows": rows,
        "trainer_tokens_per_s": tokens / best_trainer,
        "plain_tokens_per_s": tokens / best_plain,
        "ratio_trainer_over_plain": ratio,
        "notes": [
            f"{model_params / 1e6:.1f}M parameters, batch {batch} x {block} tokens, {precision}, "
            f"compile={args.compile}; {args.steps - args.warmup} timed steps after {args.warmup} warm-up, best of "
            f"{args.repeats} per side.",
            f"Trainer reaches {ratio:.3f}x the plain loop's tokens/s (1.0 = no overhead).",
        ],
    }

"""Mixed precision: step time and peak memory of the kit's GPT under each Lightning precision, in one run.

On CUDA: strict fp32 (TF32 off), fp32 with TF32 matmuls, ``bf16-mixed`` and ``16-mixed`` (with the kit's
LossScaleMonitor), GPT-2 124M by default. On CPU only fp32 and bf16 are timed, on a tiny model: the CPU
table checks that the code path works, not that bf16 is fast there (it usually is not).

    python -m benchmarks precision                # GPU: GPT-2 124M, batch 16 x 1024
    python -m benchmarks precision --config debug # quick CPU run
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch

from benchmarks._common import device_name, interleave, summarize, timing_config
from kit.callbacks.loss_scale import LossScaleMonitor
from kit.models.gpt import CausalLM
from kit.nn import GPTConfig


class StepTimer(pl.Callback):
    """Wall time of each training step after ``warmup`` steps (synchronising CUDA around the step)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.losses: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if trainer.global_step == self.warmup:
            torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def random_tokens(n: int, block: int, vocab: int, seed: int = 0) -> torch.utils.data.DataLoader:
    """Random token batches (timing only), shaped ``(input_ids, targets)`` like the kit's text data."""
    x = torch.randint(0, vocab, (n, block + 1), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:])


def set_tf32(enabled: bool) -> None:
    """Switch TF32 matmuls/convolutions on or off (no-op without CUDA)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def time_precision(
    precision: str,
    config: GPTConfig,
    batch: int,
    steps: int,
    warmup: int,
    tf32: bool = False,
    callbacks: list[pl.Callback] | None = None,
    fused: bool | None = None,
    gradient_clip_val: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``warmup + steps`` steps of the kit's CausalLM and return ms/step, tokens/s and peak memory."""
    set_tf32(tf32)
    pl.seed_everything(seed, verbose=False)
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    model = CausalLM(config, lr=3e-4, warmup_steps=1, max_steps=warmup + steps, fused=fused)
    timer = StepTimer(warmup)
    data = torch.utils.data.DataLoader(
        random_tokens(batch * (warmup + steps), config.block_size, config.vocab_size, seed), batch_size=batch
    )
    # a LossScaleMonitor brings its GradScaler settings as the 16-mixed precision plugin
    monitor = next((c for c in callbacks or [] if isinstance(c, LossScaleMonitor)), None)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=None if monitor else precision,
        plugins=[monitor.precision_plugin("cuda" if accelerator == "gpu" else "cpu")] if monitor else None,
        max_steps=warmup + steps,
        callbacks=[timer, *(callbacks or [])],
        gradient_clip_val=gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    set_tf32(False)
    # median of per-step times: robust to the odd slow step of a shared machine
    ms = 1000 * statistics.median(timer.times) if timer.times else 0.0
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
    return {
        "ms/step": ms,
        "tokens/s": batch * config.block_size / (ms / 1000) if ms else 0.0,
        "peak MiB": peak,
        "last loss": timer.losses[-1] if timer.losses else float("nan"),
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks precision", description=__doc__)
    cuda = torch.cuda.is_available()
    parser.add_argument("--config", default="gpt2" if cuda else "debug", help="GPTConfig.from_name variant")
    parser.add_argument("--batch", type=int, default=16 if cuda else 8)
    parser.add_argument("--block", type=int, default=1024 if cuda else 32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds, each running every mode once, order alternating"
    )
    a = parser.parse_args(argv)
    config = timing_config(a.config, a.block)
    if cuda:
        modes = [
            ("fp32 strict", "32-true", False, []),
            ("fp32 + TF32", "32-true", True, []),
            ("bf16-mixed", "bf16-mixed", True, []),
            ("16-mixed", "16-mixed", True, [LossScaleMonitor(init_scale=1024)]),
        ]
    else:
        modes = [("fp32", "32-true", False, []), ("bf16-mixed", "bf16-mixed", False, [])]
    last: dict[str, dict] = {}

    def side(label: str, precision: str, tf32: bool, cbs: list):
        def once() -> float:
            last[label] = time_precision(
                precision, config, a.batch, a.steps, a.warmup, tf32=tf32, callbacks=cbs
            )
            return last[label]["ms/step"]

        return once

    times = interleave({m[0]: side(*m) for m in modes}, a.repeats, label="precision")
    rows = []
    for label, *_ in modes:
        s = summarize(times[label])
        r = dict(last[label], **{"ms/step": s["median"]})
        r["tokens/s"] = a.batch * config.block_size / (s["median"] / 1000)
        rows.append(
            {
                "precision": label,
                **{k: round(v, 2) for k, v in r.items()},
                "spread %": round(s["spread_pct"], 1),
            }
        )
    base = rows[0]["ms/step"]
    tf32_base = rows[1]["ms/step"] if cuda else None
    for row in rows:
        row["speedup vs strict fp32"] = round(base / row["ms/step"], 2)
        if tf32_base:
            row["speedup vs fp32+TF32"] = round(tf32_base / row["ms/step"], 2)
    device = device_name()
    n_params = sum(p.numel() for p in CausalLM(config).parameters())
    return {
        "title": f"Mixed precision, GPT {a.config} ({n_params:,} params), batch {a.batch} x {a.block}",
        "device": device,
        "rows": rows,
        "notes": [
            f"same model, same random-token batches, one process; ms/step: median over {a.repeats} alternating "
            f"repeats of each run's median step after {a.warmup} warm-up steps; spread: (max - min) / median of the repeats",
            "seed reference (H200, GPT-2 124M): bf16 = 2.9x fp32+TF32 and 8.8x strict fp32",
            "CPU: bf16 autocast is emulated and often slower; the CPU table only checks the path",
        ],
    }

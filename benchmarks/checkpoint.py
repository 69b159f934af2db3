"""Checkpoint save and load: KitCheckpoint sync vs async, for the tiny GPT and GPT-2 124M.

For each model and mode a short ``Trainer.fit`` saves every ``--every`` steps. Reported per save:

- ``stall ms``: what the training step waited for (sync: the whole save with fsync, rename, checksum and
  manifest; async: the copy of the state to CPU);
- ``step stall ms``: the same seen from the loop, median step time of saving steps minus that of the others;
- ``write ms``: the full write (async: the background thread's time);
- ``load ms``: ``torch.load`` + model and optimizer ``load_state_dict`` of the last checkpoint;
- ``MB``: checkpoint size.

    python -m benchmarks checkpoint                          # tiny and gpt2 (124M)
    python -m benchmarks checkpoint --models tiny --steps 6  # quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._common import device_name, timing_config
from kit.callbacks.checkpoint import KitCheckpoint
from kit.models.gpt import CausalLM


class _StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[tuple[int, float]] = []
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # runs after KitCheckpoint (it comes first in the list), so a saving step includes the save
        self.times.append((trainer.global_step, time.perf_counter() - self._t))


def _run(name: str, async_save: bool, a: argparse.Namespace, folder: Path) -> dict:
    config = timing_config(name, a.block)
    torch.manual_seed(0)
    model = CausalLM(config=config, lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (a.batch * a.steps, a.block + 1))
    loader = DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=a.batch)
    ckpt = KitCheckpoint(dirpath=str(folder), every_n_train_steps=a.every, keep_last=1, async_save=async_save)
    timer = _StepTimer()
    trainer = pl.Trainer(
        max_steps=a.steps,
        accelerator="auto",
        devices=1,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        callbacks=[ckpt, timer],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, loader)
    path = folder / f"step{a.steps:08d}.ckpt"
    start = time.perf_counter()
    state = torch.load(path, map_location=model.device, weights_only=True)
    model.load_state_dict(state["state_dict"])
    trainer.optimizers[0].load_state_dict(state["optimizer_states"][0])
    load_s = time.perf_counter() - start
    saving = {s for s in range(a.every, a.steps + 1, a.every)}
    with_save = [t for s, t in timer.times[1:] if s in saving]
    without = [t for s, t in timer.times[1:] if s not in saving]
    periodic = ckpt.save_times[: len(saving)]
    writes = ckpt.background_write_s if async_save else [s["sync_s"] for s in periodic]
    return {
        "model": f"{name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)",
        "mode": "async" if async_save else "sync",
        "saves": len(periodic),
        "stall ms": round(1000 * statistics.median(s["stall_s"] for s in periodic), 1),
        "step stall ms": round(1000 * (statistics.median(with_save) - statistics.median(without)), 1)
        if with_save and without
        else None,
        "write ms": round(1000 * statistics.median(writes), 1) if writes else None,
        "load ms": round(1000 * load_s, 1),
        "MB": round(path.stat().st_size / 2**20, 1),
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks checkpoint", description=__doc__)
    parser.add_argument("--models", default="tiny,gpt2", help="comma-separated GPTConfig names")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where checkpoints go (default: a temporary folder)")
    a = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for name in a.models.split(","):
            for async_save in (False, True):  # the same model, sync then async, in one run
                rows.append(_run(name, async_save, a, Path(tmp) / f"{name}-{async_save}"))
    return {
        "title": f"KitCheckpoint save/load, sync vs async (every {a.every} steps, {a.steps} steps)",
        "device": device_name(),
        "rows": rows,
        "notes": [
            "stall = what the training step waits for; async waits only for the copy of the state to CPU",
            "write = the full save: torch.save to a temporary file, fsync, rename, SHA-256 of the file, manifest",
            "the checkpoint holds weights, AdamW state, loops, callbacks and every rank's RNG state",
            "timings depend on the disk; on a shared machine they are noisy: rerun on an idle one",
        ],
    }

"""Checkpoint save and load: KitCheckpoint sync vs async, for the tiny GPT and GPT-2 124M.

For each model, short ``Trainer.fit`` runs of ``--steps`` steps are repeated ``--repeats`` times, interleaved
(none, sync, async, then async, sync, none, ...): ``none`` saves nothing, the others save every ``--every``
steps. Reported per save:

- ``hook ms``: the loop's wait measured directly around KitCheckpoint's ``on_train_batch_end`` (the hook that
  saves) on saving steps, minus the same hook on the other steps; median over all saves, with min and max;
- ``wall ms``: the whole run's training time (first step start to last step end) minus the ``none`` run of the
  same repeat, divided by the saves; median over repeats, with min and max. This includes what the hook misses:
  on CPU an async write competes with the training steps for the cores;
- ``callback stall ms``: what KitCheckpoint itself records as the step's wait (``save_times``), median;
- ``write ms``: the full write (async: the background thread's time), median;
- ``load ms``: ``torch.load`` + model and optimizer ``load_state_dict`` of the last checkpoint;
- ``MB``: checkpoint size.

    python -m benchmarks checkpoint                                       # tiny and gpt2 (124M), 3 repeats
    python -m benchmarks checkpoint --models tiny --steps 6 --repeats 2   # quick
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks._common import device_name, interleave, progress, summarize, timing_config
from kit.callbacks.checkpoint import KitCheckpoint
from kit.models.gpt import CausalLM

MODES = ("none", "sync", "async")


class _TimedCheckpoint(KitCheckpoint):
    """KitCheckpoint with its saving hook timed from outside: what the training loop waits for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hook_s: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.hook_s.append((trainer.global_step, time.perf_counter() - start))


class _Wall(pl.Callback):
    """Training time from the first step's start to the last step's end (the final save at train end excluded)."""

    def __init__(self) -> None:
        self.first = self.last = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.first:
            self.first = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last = time.perf_counter()


def _run(name: str, mode: str, a: argparse.Namespace, folder: Path) -> dict:
    config = timing_config(name, a.block)
    torch.manual_seed(0)
    model = CausalLM(config=config, lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (a.batch * a.steps, a.block + 1))
    loader = DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=a.batch)
    every = a.every if mode != "none" else a.steps + 1  # none: only the final save, after the timed window
    ckpt = _TimedCheckpoint(
        dirpath=str(folder), every_n_train_steps=every, keep_last=1, async_save=mode == "async"
    )
    wall = _Wall()
    trainer = pl.Trainer(
        max_steps=a.steps,
        accelerator="auto",
        devices=1,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        callbacks=[ckpt, wall],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, loader)
    saving = set(range(a.every, a.steps + 1, a.every)) if mode != "none" else set()
    hooks = ckpt.hook_s[1:]  # the first step warms up
    base = statistics.median([t for s, t in hooks if s not in saving] or [0.0])
    out = {
        "wall_s": wall.last - wall.first,
        "saves": len(saving),
        "hook_s": [t - base for s, t in hooks if s in saving],
        "stall_s": [r["stall_s"] for r in ckpt.save_times[: len(saving)]],
        "write_s": list(ckpt.background_write_s[: len(saving)])
        if mode == "async"
        else [r["sync_s"] for r in ckpt.save_times[: len(saving)]],
        "params": sum(p.numel() for p in model.parameters()),
    }
    path = folder / f"step{a.steps:08d}.ckpt"
    start = time.perf_counter()
    state = torch.load(path, map_location=model.device, weights_only=True)
    model.load_state_dict(state["state_dict"])
    trainer.optimizers[0].load_state_dict(state["optimizer_states"][0])
    out["load_s"] = time.perf_counter() - start
    out["MB"] = path.stat().st_size / 2**20
    shutil.rmtree(
        folder, ignore_errors=True
    )  # the next repeat starts from an empty folder, and disk stays free
    return out


def _ms(values: list[float]) -> str:
    s = summarize([1000 * v for v in values])
    return f"{s['median']:,.1f} [{s['min']:,.1f}, {s['max']:,.1f}]"


def _model_rows(name: str, a: argparse.Namespace, tmp: Path) -> list[dict]:
    runs: dict[str, list[dict]] = {m: [] for m in MODES}

    def side(mode: str):
        def once() -> float:
            result = _run(name, mode, a, tmp / f"{name}-{mode}-{len(runs[mode])}")
            runs[mode].append(result)
            return result["wall_s"]

        return once

    interleave({m: side(m) for m in MODES}, a.repeats, label=name)
    rows = []
    for mode in ("sync", "async"):
        per_save_wall = [
            (r["wall_s"] - base["wall_s"]) / r["saves"] for r, base in zip(runs[mode], runs["none"])
        ]
        first = runs[mode][0]
        rows.append(
            {
                "model": f"{name} ({first['params'] / 1e6:.1f}M params)",
                "mode": mode,
                "saves": sum(r["saves"] for r in runs[mode]),
                "hook ms [min, max]": _ms([t for r in runs[mode] for t in r["hook_s"]]),
                "wall ms [min, max]": _ms(per_save_wall),
                "callback stall ms": round(
                    1000 * statistics.median(t for r in runs[mode] for t in r["stall_s"]), 1
                ),
                "write ms": round(1000 * statistics.median(t for r in runs[mode] for t in r["write_s"]), 1),
                "load ms": round(1000 * statistics.median(r["load_s"] for r in runs[mode]), 1),
                "MB": round(first["MB"], 1),
            }
        )
    no_save = [r["wall_s"] for r in runs["none"]]
    progress(f"{name}: runs without saves took {_ms(no_save)} ms for {a.steps} steps")
    return rows


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks checkpoint", description=__doc__)
    parser.add_argument("--models", default="tiny,gpt2", help="comma-separated GPTConfig names")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of none/sync/async runs")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where checkpoints go (default: a temporary folder)")
    a = parser.parse_args(argv)
    if not 0 < a.every <= a.steps:
        raise SystemExit(f"--every={a.every} must be between 1 and --steps={a.steps}")
    rows = []
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for name in a.models.split(","):
            rows += _model_rows(name, a, Path(tmp))
    return {
        "title": f"KitCheckpoint save/load, sync vs async (a save every {a.every} of {a.steps} steps, "
        f"{a.repeats} interleaved repeats)",
        "device": device_name(),
        "rows": rows,
        "notes": [
            "hook = the loop's wait measured around the saving hook (minus a non-saving step's hook), per save",
            "wall = extra training time of the run over the same run without saves, per save: includes an async "
            "write's competition with training for the CPU cores",
            "callback stall = KitCheckpoint's own record of the wait; async waits only for the copy of the state to CPU",
            "write = the full save: torch.save to a temporary file, fsync, rename, SHA-256 of the file, manifest",
            "the checkpoint holds weights, AdamW state, loops, callbacks and every rank's RNG state",
            "[min, max] over saves (hook) or repeats (wall); on a shared machine they are noisy: rerun on an idle one",
        ],
    }

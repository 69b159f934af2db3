"""Monitoring overhead: the tiny recipe with no monitors vs all monitors at their default cadence.

Both sides train the kit's ``CausalLM`` (same init, same pre-fetched batches, same Trainer settings,
CSV logger on both) in one process, alternating order; the monitored side adds GradientHealth,
SpikeGuard, HardwareMonitor, TrainingDoctor and HessianMonitor with default arguments. Step time is the
median of per-step wall times after warm-up, which is robust to the noise of a shared machine.
The Hessian probe's default interval (1000 steps) is longer than the run, so it is timed on its own
(one probe on the held batch) and amortised: ``probe_time / (interval * baseline step time)``.

    python -m benchmarks monitor_overhead                     # tiny recipe, CPU
    python -m benchmarks monitor_overhead --config debug --steps 30
    python -m benchmarks monitor_overhead --data synthetic    # no tokenizer needed (GPU machine)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from benchmarks._common import cuda_sync, device_name, progress, summarize
from kit.callbacks.clipping import GradientClipping
from kit.callbacks.doctor import TrainingDoctor
from kit.callbacks.gradient_health import GradientHealth
from kit.callbacks.hardware import HardwareMonitor
from kit.callbacks.hessian import HessianMonitor
from kit.callbacks.spike_guard import SpikeGuard
from kit.models.gpt import CausalLM
from kit.nn import GPTConfig

PRESETS = {
    # name: (GPTConfig base, vocab, block, batch, precision on CUDA)
    "debug": ("debug", 300, 16, 8, "32-true"),
    "tiny": ("tiny", 2048, 128, 16, "32-true"),
    "gpt2": ("gpt2", 50304, 1024, 8, "bf16-mixed"),
}


class _StepTimes(pl.Callback):
    """Per-step wall and process-CPU time, from one batch start to the next (covers every hook).

    CPU time is what this process used, so it is far less sensitive than wall time to other jobs
    sharing the machine; on CUDA the wall time is the figure that matters. On CUDA only the first
    timed mark and the last one synchronise (``sync_at``), so the host can run ahead as in a real run
    (a per-step sync would hide the cost of the monitors' own syncs); the per-step deltas then sum to
    the exact timed total and their mean, not their median, is the step time.
    """

    def __init__(self, sync_at: int | None = None) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._last: tuple[float, float] | None = None
        self.sync_at = sync_at  # None: synchronise at every mark

    def _mark(self, final: bool = False) -> None:
        if self.sync_at is None or final or len(self.times) + 1 == self.sync_at:
            cuda_sync()
        now = (time.perf_counter(), time.process_time())
        if self._last is not None:
            self.times.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
        self._last = now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark()

    def on_train_end(self, trainer, pl_module) -> None:
        self._mark(final=True)


_HOOKS = (
    "on_train_start",
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_save_checkpoint",
)


def time_hooks(callbacks: list[pl.Callback]) -> dict[str, float]:
    """Wrap every overridden training hook of ``callbacks`` with a timer; returns the seconds spent per
    callback class (filled as training runs). A direct measure that other jobs on the machine barely
    disturb, unlike the difference of two step times."""
    spent: dict[str, float] = {}
    for cb in callbacks:
        name = type(cb).__name__
        spent[name] = 0.0
        for hook in _HOOKS:
            if getattr(type(cb), hook) is getattr(pl.Callback, hook):
                continue
            fn = getattr(cb, hook)

            def timed(*a, _fn=fn, _name=name, **k):
                start = time.perf_counter()
                try:
                    return _fn(*a, **k)
                finally:
                    spent[_name] += time.perf_counter() - start

            setattr(cb, hook, timed)
    return spent


def all_monitors() -> list[pl.Callback]:
    """Every monitoring callback with its default arguments."""
    return [GradientHealth(), SpikeGuard(), HardwareMonitor(), TrainingDoctor(), HessianMonitor()]


def batches(args: argparse.Namespace) -> tuple[list, int]:
    _base, vocab, block, batch, _ = PRESETS[args.config]
    if args.data == "synthetic":
        g = torch.Generator().manual_seed(0)
        out = []
        for _ in range(args.steps):
            ids = torch.randint(vocab, (batch, block + 1), generator=g)
            out.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
        return out, vocab
    from kit.datamodules.text import TextDataModule

    dm = TextDataModule(vocab_size=vocab, block_size=block, batch_size=batch)
    dm.setup("fit")
    out, it = [], iter(dm.train_dataloader())
    while len(out) < args.steps:
        try:
            out.append(next(it))
        except StopIteration:
            it = iter(dm.train_dataloader())
    return out, dm.vocab_size


def run_side(
    config: GPTConfig, data: list, args: argparse.Namespace, monitored: bool
) -> tuple[_StepTimes, list]:
    torch.manual_seed(0)
    module = CausalLM(config, lr=args.lr, warmup_steps=10, max_steps=args.steps)
    timer = _StepTimes(sync_at=args.warmup if torch.cuda.is_available() else None)
    monitors = all_monitors() if monitored else []
    spent = time_hooks(monitors)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_steps=args.steps,
            precision=args.precision,
            logger=CSVLogger(tmp, name="bench"),
            log_every_n_steps=10,  # the tiny recipe's cadence
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            # the kit clips itself: Lightning refuses gradient_clip_val with fused AdamW in mixed precision
            callbacks=[timer, GradientClipping(max_norm=1.0, log_norms=False), *monitors],
            accelerator="auto",
            devices=1,
        )
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
        if monitored:
            hess = next(m for m in monitors if isinstance(m, HessianMonitor))
            cuda_sync()
            start, cpu = time.perf_counter(), time.process_time()
            res = hess.probe(module)
            cuda_sync()
            args._probe = (time.perf_counter() - start, time.process_time() - cpu, res)
    timer.hook_s = spent
    timer.steps = args.steps
    timer.times, timer.cpu = timer.times[args.warmup :], timer.cpu[args.warmup :]
    return timer, monitors


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks monitor_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--config", choices=sorted(PRESETS), default=None, help="default: tiny (CPU), gpt2 (CUDA)"
    )
    parser.add_argument("--data", choices=["text", "synthetic"], default=None, help="default: text on CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per side per repeat (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two sides this many times")
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.config = args.config or ("gpt2" if cuda else "tiny")
    args.data = args.data or ("synthetic" if cuda else "text")
    args.steps = args.steps or 60
    if args.warmup >= args.steps:
        raise SystemExit(f"--warmup={args.warmup} must be below --steps={args.steps}")
    base, _, block, batch, precision = PRESETS[args.config]
    args.precision = precision if cuda else "32-true"
    args.threads = torch.get_num_threads()  # pinned by the harness (--threads, default 1 on CPU)
    data, vocab = batches(args)
    config = GPTConfig.from_name(base, block_size=block, vocab_size=vocab)

    stat = statistics.fmean if cuda else statistics.median  # see _StepTimes
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    rows = []
    hook_s: dict[str, float] = {}
    hook_steps = 0
    for repeat in range(args.repeats):
        order = [False, True] if repeat % 2 == 0 else [True, False]
        for monitored in order:
            progress(f"{'all monitors' if monitored else 'no monitors'} (repeat {repeat + 1}/{args.repeats})")
            timer, _ = run_side(config, data, args, monitored)
            wall[monitored] += timer.times
            cpu[monitored] += timer.cpu
            if monitored:
                for k, v in timer.hook_s.items():
                    hook_s[k] = hook_s.get(k, 0.0) + v
                hook_steps += timer.steps
            rows.append(
                {
                    "repeat": repeat,
                    "side": "all monitors" if monitored else "no monitors",
                    "step_ms": 1000 * stat(timer.times),
                    "cpu_ms": 1000 * stat(timer.cpu),
                }
            )
    per_repeat = {
        m: [r["step_ms"] for r in rows if r["side"] == ("all monitors" if m else "no monitors")] for m in wall
    }
    spread = {m: summarize(v)["spread_pct"] for m, v in per_repeat.items()}
    med = {k: stat(v) for k, v in wall.items()}
    med_cpu = {k: stat(v) for k, v in cpu.items()}
    overhead = med[True] / med[False] - 1
    overhead_cpu = med_cpu[True] / med_cpu[False] - 1
    probe_s, probe_cpu, probe = args._probe
    interval = HessianMonitor().log_every_n_steps
    hess_amortised = probe_s / (interval * med[False])
    hess_amortised_cpu = probe_cpu / (interval * med_cpu[False])
    in_hooks = sum(hook_s.values()) / hook_steps / med[False]
    for k, v in hook_s.items():
        rows.append(
            {
                "repeat": "all",
                "side": f"time inside {k} hooks",
                "percent_of_step": 100 * v / hook_steps / med[False],
            }
        )
    rows.append({"repeat": "all", "side": "time inside all monitor hooks", "percent_of_step": 100 * in_hooks})
    rows.append(
        {
            "repeat": "all",
            "side": "Hessian probe amortised over its default interval",
            "percent_of_step": 100 * hess_amortised,
        }
    )
    rows.append(
        {
            "repeat": "all",
            "side": "overhead: monitored / none - 1 (wall; CPU time in next row)",
            "percent_of_step": 100 * overhead,
        }
    )
    rows.append(
        {
            "repeat": "all",
            "side": "overhead: monitored / none - 1 (process CPU time)",
            "percent_of_step": 100 * overhead_cpu,
        }
    )
    params = sum(p.numel() for p in CausalLM(config).parameters())
    return {
        "title": f"Monitoring overhead: all monitors at default cadence vs none ({args.config}, {args.data} data)",
        "device": device_name(),
        "rows": rows,
        "baseline_step_ms": 1000 * med[False],
        "baseline_spread_pct": spread[False],
        "monitored_spread_pct": spread[True],
        "monitored_step_ms": 1000 * med[True],
        "overhead_percent": 100 * overhead,
        "overhead_cpu_percent": 100 * overhead_cpu,
        "in_hook_percent": 100 * in_hooks,
        "in_hook_ms_per_step": {k: 1000 * v / hook_steps for k, v in hook_s.items()},
        "hessian_probe_s": probe_s,
        "hessian_probe_cpu_s": probe_cpu,
        "hessian_iterations": probe["hessian/iterations"],
        "hessian_amortised_percent": 100 * hess_amortised,
        "hessian_amortised_cpu_percent": 100 * hess_amortised_cpu,
        "notes": [
            f"{params / 1e6:.2f}M-parameter CausalLM, batch {batch} x {block}, {args.precision}; "
            f"{args.steps - args.warmup} timed steps per side per repeat, {args.repeats} repeats alternating order"
            + ("" if cuda else f", {args.threads} CPU thread(s)")
            + (
                ". step_ms/cpu_ms: mean over the timed steps (CUDA, synchronised only at both ends)."
                if cuda
                else ". step_ms/cpu_ms: median of per-step times."
            ),
            f"{'Mean' if cuda else 'Median'} step: {1000 * med[False]:.1f} ms without monitors, {1000 * med[True]:.1f} ms with all five "
            f"(GradientHealth, SpikeGuard, HardwareMonitor, TrainingDoctor, HessianMonitor at defaults): "
            f"overhead {100 * overhead:+.2f}% wall, {100 * overhead_cpu:+.2f}% process CPU time (bar: <= 3%); "
            f"spread of the per-repeat step times (max - min) / median: {spread[False]:.1f}% without, "
            f"{spread[True]:.1f}% with monitors. "
            f"Time measured inside the monitors' hooks: {1000 * sum(hook_s.values()) / hook_steps:.2f} ms per step "
            f"= {100 * in_hooks:.2f}% of the baseline step (includes the step's GPU work they wait for, on CUDA).",
            f"Hessian probe: {probe_s:.2f} s wall / {probe_cpu:.2f} s CPU for {int(probe['hessian/iterations'])} "
            f"power iterations (converged={bool(probe['hessian/converged'])}); amortised over its default "
            f"interval of {interval} steps: {100 * hess_amortised:.2f}% wall, {100 * hess_amortised_cpu:.2f}% CPU "
            "of step time (bar: <= 5%).",
        ],
    }

"""GPU performance suite: the kit's recipe through the Trainer against a raw PyTorch loop.

    python benchmarks/gpu_perf.py --out DIR            # GPT-2 124M, 16 x 1024, compiled (CUDA)
    python benchmarks/gpu_perf.py --out DIR --smoke    # tiny shapes, no compile: proves the wiring on CPU

Every case trains the same model from the same init on the same synthetic token batches (pinned host
tensors, copied to the device each step on both sides) and times the steps after a warm-up with the
device synchronised. One table: tokens/s, MFU (``kit.health.flops.transformer_flops`` over the device's
dense bf16 peak from ``kit.health.flops.GPUS``; fp32 rows are shown against the same peak), peak memory,
and the ratio to the raw loop measured in the same run.

Cases (``--cases`` picks a subset; default all):

- ``raw``: a plain loop, bf16 autocast, compiled, fused AdamW, ``clip_grad_norm_(1.0)``, same schedule.
- ``trainer``: ``CausalLM`` through ``lightning.Trainer``, bf16-mixed, compiled, fused AdamW, the kit's
  ``GradientClipping(1.0)``. Bar: >= 0.98x raw.
- ``monitors``: the same plus the five monitors at their defaults (GradientHealth, SpikeGuard,
  HardwareMonitor, TrainingDoctor, HessianMonitor). Bar: >= 0.95x raw.
- ``fp32``, ``tf32``, ``fp16``: the ``trainer`` case at strict fp32, fp32 with TF32 matmuls, and 16-mixed
  with the kit's ``ScaledFP16Precision`` loss scaler and ``LossScaleMonitor``.
- ``ac-full``, ``ac-ffn``, ``ac-attention``: the ``trainer`` case with activation checkpointing, whole blocks
  or selectively (``kit.nn.transforms.CHECKPOINT_MODES``); ``ac-ffn`` is in the default set.
- ``moe``: the ``trainer`` case with ``ffn="moe"`` (8 experts, top-1): the same active parameters per token as
  the dense ``trainer`` row, so its ``x raw`` beside ``trainer``'s is MoE against dense at equal active
  parameters (MFU counts active parameters).

``raw`` and ``trainer`` run twice in the order raw, trainer, monitors, ..., trainer, raw, so a drifting
clock favours neither; their rows report the median of the two. Results are written after every case,
so a time-out keeps what finished. Sliding-window attention and MoE have their own GPU script
(``benchmarks/gpu_architecture.py``), run by the same ``gpu_suite.sh``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import cuda_sync, device_name  # noqa: E402
from kit.callbacks.clipping import GradientClipping  # noqa: E402
from kit.health.flops import peak_flops_for  # noqa: E402
from kit.models.gpt import CausalLM, GPTConfig  # noqa: E402

CASES = ("raw", "trainer", "monitors", "fp32", "tf32", "fp16", "ac-full", "ac-ffn", "moe")


def _config(args) -> GPTConfig:
    if args.smoke:
        return GPTConfig.from_name("debug", vocab_size=args.vocab, block_size=args.block, dropout=0.0)
    return GPTConfig.from_name("gpt2", vocab_size=args.vocab, block_size=args.block, dropout=0.0)


def _batches(args) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(args.steps):
        ids = torch.randint(args.vocab, (args.batch, args.block + 1), generator=g)
        x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        if torch.cuda.is_available():
            x, y = x.pin_memory(), y.pin_memory()
        out.append((x, y))
    return out


def _module(config: GPTConfig, args, *, compile_: bool) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(config, lr=6e-4, warmup_steps=10, max_steps=args.steps, compile=compile_, fused=args.fused)


class _Timer(pl.Callback):
    """Wall time from the start of step ``warmup`` to the end of training, device synchronised."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            cuda_sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        cuda_sync()
        self.end = time.perf_counter()


def run_raw(config: GPTConfig, data, args) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = _module(config, args, compile_=args.compile).to(device)
    module.train()
    opt = module.configure_optimizers()
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    start = None
    for step, (x, y) in enumerate(data):
        if step == args.warmup:
            cuda_sync()
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            loss = module._loss((x, y), 0.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    cuda_sync()
    return time.perf_counter() - start


def run_trainer(config: GPTConfig, data, args, *, precision: str, callbacks=(), plugins=None) -> float:
    module = _module(config, args, compile_=args.compile)
    timer = _Timer(args.warmup)
    trainer = pl.Trainer(
        max_steps=args.steps,
        precision=None if plugins else precision,
        plugins=plugins,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
        callbacks=[timer, GradientClipping(max_norm=1.0, log_norms=False), *callbacks],
        accelerator="auto",
        devices=1,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return timer.end - timer.start


def _monitors() -> list[pl.Callback]:
    from benchmarks.monitor_overhead import all_monitors

    return all_monitors()


def run_case(name: str, config: GPTConfig, data, args) -> float:
    bf16 = "bf16-mixed" if args.bf16 else "32-true"
    if name == "raw":
        return run_raw(config, data, args)
    if name == "trainer":
        return run_trainer(config, data, args, precision=bf16)
    if name == "monitors":
        return run_trainer(config, data, args, precision=bf16, callbacks=_monitors())
    if name in ("fp32", "tf32"):
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        torch.backends.cudnn.allow_tf32 = name == "tf32"
        try:
            return run_trainer(config, data, args, precision="32-true")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if name == "fp16":
        if not torch.cuda.is_available():
            raise RuntimeError("fp16 with a loss scaler needs CUDA")
        from kit.callbacks.loss_scale import LossScaleMonitor, ScaledFP16Precision

        return run_trainer(
            config, data, args, precision="16-mixed",
            plugins=[ScaledFP16Precision("cuda")], callbacks=[LossScaleMonitor()],
        )
    if name.startswith("ac-"):
        from kit.nn.transforms import CHECKPOINT_MODES

        mode = name.removeprefix("ac-")
        if mode not in CHECKPOINT_MODES:
            raise LookupError(f"activation checkpointing has no mode {mode!r}; modes: {CHECKPOINT_MODES}")
        return run_trainer(replace(config, activation_checkpointing=mode), data, args, precision=bf16)
    if name == "moe":
        return run_trainer(replace(config, ffn="moe"), data, args, precision=bf16)
    raise ValueError(f"unknown case {name!r}; choose from {CASES}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="debug model, 8 x 32, no compile (CPU wiring check)")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--steps", type=int, default=None, help="steps per case (default 60 GPU, 6 smoke)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 25 GPU, 2 smoke)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.batch, args.block, args.vocab = (8, 32, 512) if args.smoke else (16, 1024, 50304)
    args.steps = args.steps or (6 if args.smoke else 60)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 25)
    args.compile = cuda and not args.smoke
    args.bf16 = cuda
    args.fused = True if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    config = _config(args)
    data = _batches(args)
    model = CausalLM(config).model
    tokens = (args.steps - args.warmup) * args.batch * args.block
    flops = model.flops_per_token(args.block) * tokens
    peak = peak_flops_for(device_name()) if cuda else None
    order = [c for c in ("raw", "trainer") if c in args.cases]
    order += [c for c in args.cases if c not in ("raw", "trainer")] + order[::-1]

    seconds: dict[str, list[float]] = {}
    memory: dict[str, float] = {}
    errors: dict[str, str] = {}
    result: dict = {}
    for name in order:
        print(f"=== {name}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            took = run_case(name, config, data, args)
        except Exception as exc:  # one failing case must not lose the others' figures
            errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            continue
        seconds.setdefault(name, []).append(took)
        if cuda:
            memory[name] = torch.cuda.max_memory_allocated() / 2**30
        result = _report(args, config, model, tokens, flops, peak, seconds, memory, errors)
        (args.out / "gpu_perf.json").write_text(json.dumps(result, indent=2))
        (args.out / "gpu_perf.md").write_text(_markdown(result))
        print(_markdown(result), flush=True)
    return result


def _report(args, config, model, tokens, flops, peak, seconds, memory, errors) -> dict:
    rows = []
    raw = statistics.median(seconds["raw"]) if "raw" in seconds else None
    for name, times in seconds.items():
        s = statistics.median(times)
        rows.append({
            "case": name,
            "runs": len(times),
            "tokens_per_s": tokens / s,
            "mfu": flops / s / peak if peak else None,
            "peak_mem_gib": memory.get(name),
            "vs_raw": raw / s if raw else None,
        })
    return {
        "title": "GPU performance: the kit recipe through the Trainer vs a raw PyTorch loop",
        "device": device_name(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "config": {
            "params": model.num_params(), "batch": args.batch, "block": args.block, "vocab": args.vocab,
            "compile": args.compile, "steps": args.steps, "warmup": args.warmup, "smoke": args.smoke,
        },
        "rows": rows,
        "errors": errors,
        "bars": {"trainer >= 0.98x raw": 0.98, "monitors >= 0.95x raw": 0.95, "trainer MFU >= 0.40": 0.40},
    }


def _markdown(result: dict) -> str:
    c = result["config"]
    lines = [
        f"# {result['title']}",
        "",
        f"{result['device']}; torch {result['torch']}, lightning {result['lightning']}; {c['params'] / 1e6:.1f}M "
        f"params, batch {c['batch']} x {c['block']}, compile={c['compile']}, {c['steps'] - c['warmup']} timed "
        f"steps after {c['warmup']}.",
        "",
        "| case | runs | tokens/s | MFU | peak GiB | x raw |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['runs']} | {r['tokens_per_s']:,.0f} | {fmt(r['mfu'], '.1%')} | "
            f"{fmt(r['peak_mem_gib'], '.2f')} | {fmt(r['vs_raw'], '.3f')} |"
        )
    for name, err in result["errors"].items():
        lines.append(f"\n{name} failed: {err}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Gradient compression and 1-bit Adam: wire bytes per step and loss, every method vs dense all-reduce.

Trains the kit's GPT (bytes as tokens, the pydoc corpus that ships with CPython) with DDP in ``--world``
gloo processes on CPU, once per method, from the same seed and on the same batches, in one run, for each
of ``--seeds``. Reports the wire bytes one worker sends (counted per collective at this W: ring
all-reduce, all-gather, all-to-all) vs a dense fp32 ring all-reduce at the same W, over the whole run and
over the compression stage, the held-out loss after the same number of steps (mean over seeds, and each
seed's ratio to its own dense run), the training-loss curve (a PNG beside the table), and the ratios to
the uncompressed baseline. The LR follows the gpt-tiny recipe's shape by default (linear warm-up over 1/6
of the steps, cosine to 0.1x), the same for every method. ``1bit-adam`` is
:class:`kit.parallel.onebit_adam.OneBitAdamW` (dense warm-up for ``--freeze-step`` steps, then frozen
variance and 1-bit two-phase momentum averaging; ``1bit-adam-paper``/``-deepspeed``/``-nocompress`` are
its variants, see ``ADAM_VARIANTS``); every other method is a DDP comm hook under the ``--optimizer``.
``--paper`` prints the formula table instead (no training).

    python -m benchmarks compression --steps 60
    python -m benchmarks compression --suffix=-w4 --world 4 --steps 600 --freeze-step 75 --seeds 0,1,2
    python -m benchmarks compression --suffix=-w2-constant --steps 600 --schedule constant --warmup 0
    python -m benchmarks compression --suffix=-paper --paper
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import socket
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from benchmarks._common import progress
from kit.optim import lr_lambda
from kit.parallel.comm_hooks import OneBitAdamHookState, make_comm_hook, onebit_adam_hook
from kit.parallel.compression import method_wire_bytes, powersgd_bytes
from kit.parallel.onebit_adam import OneBitAdamW

# "fork": workers start without re-importing torch and the kit.
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
HOOK_NAMES = ("allreduce", "fp16", "bf16", "powersgd", "topk", "1bit", "1bit-adam")
# 1-bit Adam's variants beside "1bit-adam" (OneBitAdamW's defaults): name -> OneBitAdamW keyword arguments
ADAM_VARIANTS = {
    "1bit-adam": {},
    "1bit-adam-paper": {"compress": "momentum"},  # the paper's choice of what to compress, the kit's scale
    "1bit-adam-deepspeed": {"compress": "momentum", "scale": "l2"},  # DeepSpeed's former OnebitAdam
    "1bit-adam-nocompress": {"compress": "none"},  # frozen variance, dense momentum all-reduce (ablation)
}
CURVE_POINTS = 6  # training-loss curve columns in the table


def _corpus() -> torch.Tensor:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def _batch(
    data: torch.Tensor, gen: torch.Generator, batch: int, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, data.numel() - block - 1, (batch,), generator=gen)
    x = torch.stack([data[s : s + block] for s in starts])
    y = torch.stack([data[s + 1 : s + block + 1] for s in starts])
    return x, y


def _scale_kwargs(args: dict) -> dict:
    """The 1-bit scale layout asked for on the command line; the kit's defaults where nothing was asked."""
    out = {"per_tensor_scale": False} if args["chunk_scale"] else {}
    out = {"per_tensor_scale": True} if args.get("tensor_scale") else out
    return out if args["scale_block"] is None else {**out, "block": args["scale_block"]}


def _worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    from kit.nn import GPT, GPTConfig

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # a bounded timeout turns a stuck collective into an error instead of a silent hang
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=args["timeout_s"]))
    data = _corpus()
    split = int(0.9 * data.numel())
    train, val = data[:split], data[split:]
    val_gen = torch.Generator().manual_seed(1234)
    val_batches = [_batch(val, val_gen, 16, args["block"]) for _ in range(args["val_batches"])]
    results = {}
    for name in args["hooks"]:
        torch.manual_seed(args["seed"])
        cfg = GPTConfig.from_name(
            "debug",
            vocab_size=256,
            block_size=args["block"],
            n_layer=args["n_layer"],
            n_head=4,
            n_embd=args["n_embd"],
        )
        model = GPT(cfg)
        # one bucket: torch's PowerSGD over gloo mismatches collectives when two buckets are in flight
        ddp = DistributedDataParallel(model, bucket_cap_mb=1024)
        if name.startswith("1bit-adam"):
            state, hook = OneBitAdamHookState(), onebit_adam_hook
        else:
            state, hook = make_comm_hook(
                name,
                topk_ratio=args["ratio"],
                powersgd_rank=args["rank"],
                powersgd_start_iter=args["start_iter"],
                dense_start=args["dense_start"],
                scheme=args["scheme"],
                **_scale_kwargs(args),
            )
        ddp.register_comm_hook(state, hook)
        if name.startswith("1bit-adam"):
            opt = OneBitAdamW(
                model.parameters(),
                lr=args["lr"],
                weight_decay=0.0,
                freeze_step=args["freeze_step"],
                **ADAM_VARIANTS[name],
                **_scale_kwargs(args),
            )
            opt.stats, state.optimizer = state.stats, opt
        elif args["optimizer"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=args["lr"], momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=args["lr"], weight_decay=0.0)
        # the recipe's LR shape (kit.optim.lr_lambda), the same for every method; "constant" with no warm-up = none
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(args["warmup"], args["steps"], args["schedule"], args["min_lr_ratio"])
        )
        gen = torch.Generator().manual_seed(args["seed"] * 1000 + rank)
        sent_steady = dense_steady = 0
        first = args["dense_start"]
        if name == "powersgd":
            first = args["start_iter"]
        elif name.startswith("1bit-adam"):
            first = args["freeze_step"]
        losses = []
        start = time.perf_counter()
        for step in range(args["steps"]):
            x, y = _batch(train, gen, args["batch"], args["block"])
            loss = F.cross_entropy(ddp(x).reshape(-1, 256), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args["clip"]:
                # each worker clips the gradient it holds: the averaged one, or its own in 1-bit Adam's
                # compression stage (no gradient all-reduce there), as Lightning's clipping would
                torch.nn.utils.clip_grad_norm_(model.parameters(), args["clip"])
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if rank == 0 and (step + 1) % 100 == 0:
                progress(
                    f"seed {args['seed']} {name}: step {step + 1}/{args['steps']}, loss {losses[-1]:.3f}"
                )
            sent, dense = state.stats.pop_step()
            if step >= first:
                sent_steady += sent
                dense_steady += dense
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            val_loss = sum(
                float(F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))) for x, y in val_batches
            ) / len(val_batches)
        checksum = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).sum()
        sums = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(sums, checksum)
        curve = torch.tensor(losses)
        dist.all_reduce(curve)  # the mean training loss over workers, step by step
        results[name] = {
            "first_compressed_step": first,
            "by_collective": dict(state.stats.by_collective),
            "loss_curve": (curve / world).tolist(),
            "bytes_per_step": state.stats.sent / args["steps"],
            "dense_bytes_per_step": state.stats.dense / args["steps"],
            "bytes_cut_total": 1 - state.stats.sent / max(state.stats.dense, 1),
            "bytes_cut_steady": 1 - sent_steady / max(dense_steady, 1),
            "bytes_steady": sent_steady,
            "val_loss": val_loss,
            "train_loss_last": float(loss.detach()),
            "step_ms": 1000 * elapsed / args["steps"],
            "replicas_in_sync": bool(all(torch.allclose(s, sums[0]) for s in sums)),
        }
        # Free DDP (and its reducer) while the process group still exists: destroying the group first
        # can leave the reducer's destructor blocked forever at exit (seen as rare hangs of one worker).
        del ddp, opt, state, hook
        gc.collect()
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(
    hooks: tuple[str, ...] = HOOK_NAMES,
    steps: int = 60,
    world: int = 2,
    n_embd: int = 128,
    n_layer: int = 2,
    block: int = 32,
    batch: int = 8,
    lr: float = 3e-3,
    ratio: float = 0.01,
    rank: int = 4,
    start_iter: int = 5,
    dense_start: int = 0,
    optimizer: str = "adamw",
    seed: int = 0,
    freeze_step: int = 75,
    scheme: str = "2phase",
    scale_block: int | None = None,
    chunk_scale: bool = False,
    tensor_scale: bool = False,
    schedule: str = "constant",
    warmup: int = 0,
    min_lr_ratio: float = 0.1,
    clip: float = 0.0,
    val_batches: int = 4,
) -> dict[str, dict]:
    """Train once per hook in ``world`` gloo processes; return per-hook metrics (see module docstring)."""
    args = {
        "hooks": list(hooks), "steps": steps, "n_embd": n_embd, "n_layer": n_layer, "block": block,
        "batch": batch, "lr": lr, "ratio": ratio, "rank": rank, "start_iter": start_iter, "dense_start": dense_start, "optimizer": optimizer, "seed": seed, "timeout_s": 180,
        "freeze_step": freeze_step, "scheme": scheme, "scale_block": scale_block, "chunk_scale": chunk_scale,
        "tensor_scale": tensor_scale,
        "schedule": schedule, "warmup": warmup, "min_lr_ratio": min_lr_ratio, "clip": clip,
        "val_batches": val_batches,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.start_processes(
            _worker, args=(world, _free_port(), args, out), nprocs=world, join=True, start_method=START_METHOD
        )
        return json.loads(Path(out).read_text())


# Paper models as parameter shapes (weights as (out, in); PowerSGD views each as shape[0] x rest).
def gpt2_124m_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small: 12 layers, d=768, 50257-token tied embedding, 1024 positions (124.4M parameters)."""
    d, shapes = 768, [(50257, 768), (1024, 768), (768,), (768,)]
    for _ in range(12):
        shapes += [(768,), (768,), (3 * d, d), (3 * d,), (d, d), (d,), (768,), (768,), (4 * d, d), (4 * d,)]
        shapes += [(d, 4 * d), (d,)]
    return shapes


def llama_7b_shapes() -> list[tuple[int, ...]]:
    """A LLaMA-7B-shaped model: 32 layers, d=4096, SwiGLU 11008, 32000-token untied embedding/head (6.7B)."""
    d, f, shapes = 4096, 11008, [(32000, 4096), (32000, 4096), (4096,)]
    for _ in range(32):
        shapes += [(d,), (d, d), (d, d), (d, d), (d, d), (d,), (f, d), (f, d), (d, f)]
    return shapes


PAPER_METHODS = (
    ("dense", "fp32 ring all-reduce"),
    ("fp16", "fp16 ring all-reduce"),
    ("powersgd", "PowerSGD rank 4, ring all-reduce of P, Q (+ vectors dense)"),
    ("topk-allgather", "top-1%, all-gather of values + int32 indices"),
    ("topk-2phase", "top-1% per chunk, all-to-all + all-gather"),
    ("1bit-allgather", "1-bit + one scale per tensor, all-gather"),
    ("1bit-2phase", "1-bit + one scale per chunk, all-to-all + all-gather (1-bit Adam)"),
    ("1bit-2phase-b32", "1-bit + one scale per 32 entries of a tensor, all-to-all + all-gather (ddp-1bit)"),
)


def _readable(x: float) -> float | str:
    return round(x, 2) if x < 1000 else f"{x:,.0f}"


def paper_table(worlds: tuple[int, ...] = (8, 64, 512), links_gbps: tuple[float, ...] = (100, 400)) -> dict:
    """Wire bytes per step and bandwidth time from the formulas, for GPT-2 124M and a 7B model."""
    rows = []
    for model, shapes in (("GPT-2 124M", gpt2_124m_shapes()), ("7B", llama_7b_shapes())):
        numel = sum(math.prod(s) for s in shapes)
        psgd = powersgd_bytes(shapes, rank=4)
        for world in worlds:
            dense = method_wire_bytes("dense", numel, world)
            for method, _ in PAPER_METHODS:
                n_scales = len(shapes) if method == "1bit-allgather" else 1
                if method == "1bit-2phase-b32":  # a DDP bucket holds the gradients in reverse order
                    sizes = [math.prod(s) for s in shapes][::-1]
                    b = method_wire_bytes("1bit-2phase", numel, world, block=32, segments=sizes)
                else:
                    b = method_wire_bytes(method, numel, world, 0.01, psgd, n_scales)
                row = {"model": model, "params": f"{numel / 1e6:,.1f}M", "W": world, "method": method,
                       "MB sent/worker/step": _readable(b / 1e6), "cut vs dense": f"{1 - b / dense:.1%}"}  # fmt: skip
                for gbps in links_gbps:
                    row[f"ms @ {gbps:g} Gb/s"] = _readable(1000 * 8 * b / (gbps * 1e9))
                rows.append(row)
    return {
        "title": "Gradient (or momentum) communication per step, from the formulas: GPT-2 124M and 7B at W = "
        + ", ".join(str(w) for w in worlds),
        "device": "none (closed-form: kit.parallel.compression.method_wire_bytes)",
        "rows": rows,
        "notes": [
            "bytes = what one worker sends per step (= what it receives) with the bandwidth-optimal algorithm: ring "
            "all-reduce 2(W-1)/W x B, ring all-gather (W-1) x B, pairwise all-to-all (W-1)/W x B",
            "the same formulas match the bytes of the tensors passed to each collective in real gloo runs at W=2 "
            "and W=4 (tests/test_wire_bytes.py) and the measured runs in compression-w2.md / compression-w4.md",
            "ms = bytes x 8 / link rate: the bandwidth term only (no latency, no overlap with backward, no "
            "compression compute); all-to-all sends W-1 messages per worker, so at W=512 latency adds to it",
            "methods: " + "; ".join(f"{m} = {d}" for m, d in PAPER_METHODS),
            "1-bit Adam communicates dense for its warm-up (freeze_step, 15-25% of the run in the paper): the "
            "whole-run figure is warm-up share x dense + the rest x 1bit-2phase",
        ],
    }


def _formula_bytes(name: str, numel: int, shapes: list, world: int, args: argparse.Namespace) -> float:
    """Closed-form wire bytes of one compressed step of ``name`` (one DDP bucket) at ``world``."""
    two = args.scheme == "2phase"
    method = {
        "allreduce": "dense", "fp16": "fp16", "bf16": "fp16", "powersgd": "powersgd",
        "topk": "topk-2phase" if two else "topk-allgather", "1bit": "1bit-2phase" if two else "1bit-allgather",
        "1bit-adam": "1bit-2phase", "1bit-adam-paper": "1bit-2phase", "1bit-adam-deepspeed": "1bit-2phase",
        "1bit-adam-nocompress": "dense",
    }[name]  # fmt: skip
    n_scales = len(shapes) if method == "1bit-allgather" else 1
    sizes = [math.prod(s) for s in shapes]
    adam = name.startswith("1bit-adam")
    per_tensor, block = _scale_layout(args, adam)
    # a DDP bucket holds the gradients in reverse order of the parameters; 1-bit Adam packs its momenta in order
    segments = (sizes if adam else sizes[::-1]) if per_tensor else None
    return method_wire_bytes(
        method, numel, world, args.ratio, powersgd_bytes(shapes, args.rank), n_scales, block, segments
    )


def _over_seeds(runs: list[dict[str, dict]], seeds: list[int]) -> dict[str, dict]:
    """One entry per method: the first seed's bytes (the same for every seed), mean losses, per-seed ratios.

    ``loss_ratios`` are each seed's val loss over that seed's dense val loss (paired: same init, same batches).
    """
    out = {}
    for name in runs[0]:
        per = [run[name] for run in runs]
        merged = dict(per[0])
        merged["val_losses"] = [r["val_loss"] for r in per]
        merged["val_loss"] = sum(merged["val_losses"]) / len(per)
        merged["loss_ratios"] = [r["val_loss"] / run["allreduce"]["val_loss"] for r, run in zip(per, runs)]
        merged["loss_curve"] = [sum(xs) / len(per) for xs in zip(*(r["loss_curve"] for r in per))]
        merged["replicas_in_sync"] = all(r["replicas_in_sync"] for r in per)
        merged["seeds"] = list(seeds)
        out[name] = merged
    return out


def _scale_layout(a: argparse.Namespace, adam: bool) -> tuple[bool, int | None]:
    """``(per_tensor_scale, block)`` of this run: the hook's / the optimizer's defaults unless overridden."""
    defaults = inspect.signature(OneBitAdamW if adam else make_comm_hook).parameters
    per_tensor = a.tensor_scale or (not a.chunk_scale and defaults["per_tensor_scale"].default)
    return per_tensor, a.block if a.block is not None else defaults["block"].default


def _scale_note(a: argparse.Namespace, adam: bool) -> str:
    """Where the 1-bit scales go for this run, in words (the table's notes)."""
    per_tensor, block = _scale_layout(a, adam)
    where = "tensor piece of a chunk" if per_tensor else "chunk"
    return f"one per {where}" + (f", in blocks of {block} entries" if block else "")


def _plot(res: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in res.items():
        curve = torch.tensor(r["loss_curve"])
        window = max(1, len(curve) // 30)
        smooth = curve.unfold(0, window, 1).mean(1) if len(curve) >= window else curve
        ax.plot(range(window, window + len(smooth)), smooth.tolist(), label=name, lw=1.3)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean over workers, {window}-step average)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks compression", description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.01, help="top-k fraction")
    parser.add_argument("--rank", type=int, default=4, help="PowerSGD rank")
    parser.add_argument("--start-iter", type=int, default=5, help="PowerSGD first compressed step")
    parser.add_argument("--dense-start", type=int, default=0, help="top-k/1bit dense warm-up steps")
    parser.add_argument(
        "--freeze-step", type=int, default=None, help="1bit-adam warm-up (default: 12.5%% of steps)"
    )
    parser.add_argument(
        "--scheme", choices=("2phase", "allgather"), default="2phase", help="top-k/1bit collective"
    )
    parser.add_argument(
        "--block", type=int, default=None, help="1bit/1bit-adam two-phase: entries per scale within a tensor"
    )
    parser.add_argument(
        "--chunk-scale",
        action="store_true",
        help="1bit/1bit-adam: one scale per chunk (bucket), not per tensor",
    )
    parser.add_argument(
        "--tensor-scale",
        action="store_true",
        help="1bit/1bit-adam: one scale per tensor piece of a chunk (1-bit Adam's default is one per chunk)",
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine", "linear"),
        default="cosine",
        help="LR after --warmup (kit.optim.lr_lambda); the default is gpt-tiny's shape: cosine to 0.1 x",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="linear LR warm-up steps (default: 1/6 of the steps, gpt-tiny's)",
    )
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine/linear floor, x peak LR")
    parser.add_argument("--clip", type=float, default=0.0, help="clip each worker's gradient norm (0: off)")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds (model init and batches); figures are their mean"
    )
    parser.add_argument("--val-batches", type=int, default=16, help="held-out batches of 16 x 32 bytes")
    parser.add_argument(
        "--optimizer", choices=("adamw", "sgd"), default="adamw", help="sgd = momentum 0.9, nesterov"
    )
    parser.add_argument("--hooks", default=",".join(HOOK_NAMES))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw per-hook metrics here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="the loss curves' PNG (default: compression.png beside the table)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--paper", action="store_true", help="the formula table for GPT-2 124M / 7B, no training"
    )
    a = parser.parse_args(argv)
    if a.paper:
        return paper_table()
    if a.chunk_scale and a.tensor_scale:
        parser.error("--chunk-scale and --tensor-scale contradict each other; pass at most one")
    freeze = a.freeze_step if a.freeze_step is not None else max(1, a.steps // 8)
    warmup = a.warmup if a.warmup is not None else a.steps // 6
    hooks = tuple(h for h in a.hooks.split(",") if h)
    unknown = sorted(set(hooks) - {*HOOK_NAMES, *ADAM_VARIANTS})
    if unknown:
        parser.error(
            f"--hooks {','.join(unknown)} unknown; choose from {', '.join(dict.fromkeys([*HOOK_NAMES, *ADAM_VARIANTS]))}"
        )
    if "allreduce" not in hooks:
        hooks = ("allreduce", *hooks)
    seeds = [int(x) for x in a.seeds.split(",") if x]
    runs = [run_ddp(
        hooks,
        a.steps,
        a.world,
        a.n_embd,
        a.n_layer,
        lr=a.lr,
        ratio=a.ratio,
        rank=a.rank,
        start_iter=a.start_iter,
        dense_start=a.dense_start,
        optimizer=a.optimizer,
        freeze_step=freeze,
        scheme=a.scheme,
        scale_block=a.block,
        chunk_scale=a.chunk_scale,
        tensor_scale=a.tensor_scale,
        schedule=a.schedule,
        warmup=warmup,
        min_lr_ratio=a.min_lr_ratio,
        clip=a.clip,
        val_batches=a.val_batches,
        seed=seed,
    ) for seed in seeds]  # fmt: skip
    res = _over_seeds(runs, seeds)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    from kit.nn import GPT, GPTConfig

    cfg = GPTConfig.from_name(
        "debug", vocab_size=256, block_size=32, n_layer=a.n_layer, n_head=4, n_embd=a.n_embd
    )
    with torch.device("meta"):
        shapes = [tuple(p.shape) for p in GPT(cfg).parameters()]
    numel = sum(math.prod(s) for s in shapes)
    points = [round(a.steps * (i + 1) / CURVE_POINTS) for i in range(CURVE_POINTS)]
    rows = []
    for name in hooks:
        r = res[name]
        compressed = a.steps - r["first_compressed_step"]
        formula = _formula_bytes(name, numel, shapes, a.world, a)
        row = {
            "method": name,
            "bytes/step": round(r["bytes_per_step"]),
            "dense bytes/step": round(r["dense_bytes_per_step"]),
            "bytes cut (all steps)": round(r["bytes_cut_total"], 4),
            "bytes cut (compression stage)": round(r["bytes_cut_steady"], 4),
            "warm-up steps": r["first_compressed_step"] if name != "allreduce" else 0,
            "measured / formula (compressed step)": round(
                r["bytes_steady"] / max(compressed, 1) / formula, 4
            ) if compressed > 0 and name != "allreduce" else "",
            "val loss": round(r["val_loss"], 4),
            "loss / dense": round(sum(r["loss_ratios"]) / len(seeds), 4),
        }  # fmt: skip
        if len(seeds) > 1:
            row["loss / dense per seed"] = " / ".join(f"{x:.3f}" for x in r["loss_ratios"])
        curve = r["loss_curve"]
        window = max(1, a.steps // (2 * CURVE_POINTS))
        for p in points:
            row[f"train loss @{p}"] = round(sum(curve[p - window : p]) / window, 3)
        row["replicas in sync"] = r["replicas_in_sync"]
        rows.append(row)
    title = (
        f"DDP gradient compression and 1-bit Adam, {a.world} gloo workers, GPT d={a.n_embd} L={a.n_layer}, "
        f"{a.optimizer} lr={a.lr}, {a.steps} steps"
        + (
            f", {a.schedule} LR (warm-up {warmup}, floor {a.min_lr_ratio})"
            if a.schedule != "constant" or warmup
            else ""
        )
        + (f", clip {a.clip}" if a.clip else "")
        + (f", seeds {a.seeds}" if seeds != [0] else "")
    )
    plot = None
    if not a.no_plot:
        from benchmarks.__main__ import out_dir

        plot = a.plot or out_dir() / "compression.png"
        _plot({h: res[h] for h in hooks}, plot, title)
    return {
        "plot": plot.name if plot else None,  # the harness renames it with --suffix
        "title": title,
        "device": f"CPU ({os.cpu_count()} cores), gloo",
        "rows": rows,
        "notes": [
            "bytes = wire bytes one worker sends per step, counted per collective at this W (ring all-reduce "
            "2(W-1)/W x B, all-gather (W-1) x B, all-to-all (W-1)/W x B), vs a dense fp32 ring all-reduce at the same W",
            f"top-k ratio={a.ratio} and 1bit ({a.scheme}): "
            + ("two-phase all-to-all + all-gather, worker+server error feedback; 1-bit scales: "
               + _scale_note(a, adam=False) + " (1bit), " + _scale_note(a, adam=True) + " (1bit-adam*)"
               if a.scheme == "2phase" else "all-gather of every worker's message, one scale per tensor"),
            f"PowerSGD rank={a.rank}: dense all-reduce for the first {a.start_iter} steps; top-k/1bit dense "
            f"warm-up: {a.dense_start} steps; 1bit-adam = OneBitAdamW, freeze_step={freeze} (dense AdamW before, "
            "then frozen variance and 1-bit two-phase averaging of the update m/(sqrt(v)+eps), no gradient all-reduce); "
            "1bit-adam-paper = the same with the momentum m compressed, as in the paper; 1bit-adam-deepspeed = "
            "momentum compressed with DeepSpeed's scale ||x||_2/sqrt(n) (its former OnebitAdam); "
            "1bit-adam-nocompress = frozen variance, momentum averaged by a dense all-reduce (ablation)",
            "compression stage = the steps after each method's warm-up; 'all steps' includes the warm-up",
            "measured / formula: compression-stage bytes per step over kit.parallel.compression.method_wire_bytes",
            f"val loss = held-out cross-entropy (nats/byte, {a.val_batches} batches of 16 x 32) after the same steps on "
            f"the same batches, mean over seeds {a.seeds}; loss / dense = mean over seeds of each seed's val loss over "
            "that seed's dense val loss (same init, same batches); train loss @s = mean over workers, seeds and the "
            f"{max(1, a.steps // (2 * CURVE_POINTS))} steps before s",
            f"LR: {a.schedule} after a linear warm-up of {warmup} steps to lr, floor {a.min_lr_ratio} x lr "
            "(kit.optim.lr_lambda, gpt-tiny's shape), the same for every method"
            + (f"; every worker clips its gradient's norm to {a.clip}" if a.clip else ""),
            "timing is not reported: loss and bytes only (the 2-core CPU runs W processes of 1 thread)",
        ],
    }  # fmt: skip

"""Gradient compression: bytes per step and loss after N steps, every comm hook vs dense all-reduce.

Trains the kit's GPT (bytes as tokens, the pydoc corpus that ships with CPython) with DDP in ``--world``
gloo processes on CPU, once per hook, from the same seed and on the same batches, in one run. Reports
per-worker payload bytes vs a dense fp32 all-reduce, the held-out loss after the same number of steps,
and both as ratios to the uncompressed baseline.

    python -m benchmarks compression --steps 60
"""

from __future__ import annotations

import argparse
import gc
import json
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

from kit.parallel.comm_hooks import make_comm_hook

# "fork": workers start without re-importing torch and the kit.
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
HOOK_NAMES = ("allreduce", "fp16", "bf16", "powersgd", "topk", "1bit")


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


def _worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    from kit.models.gpt import GPT, GPTConfig

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # a bounded timeout turns a stuck collective into an error instead of a silent hang
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=args["timeout_s"]))
    data = _corpus()
    split = int(0.9 * data.numel())
    train, val = data[:split], data[split:]
    val_gen = torch.Generator().manual_seed(1234)
    val_batches = [_batch(val, val_gen, 16, args["block"]) for _ in range(4)]
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
        state, hook = make_comm_hook(
            name,
            topk_ratio=args["ratio"],
            powersgd_rank=args["rank"],
            powersgd_start_iter=args["start_iter"],
            dense_start=args["dense_start"],
        )
        ddp.register_comm_hook(state, hook)
        if args["optimizer"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=args["lr"], momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=args["lr"], weight_decay=0.0)
        gen = torch.Generator().manual_seed(args["seed"] * 1000 + rank)
        sent_steady = dense_steady = 0
        start = time.perf_counter()
        for step in range(args["steps"]):
            x, y = _batch(train, gen, args["batch"], args["block"])
            loss = F.cross_entropy(ddp(x).reshape(-1, 256), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sent, dense = state.stats.pop_step()
            if step >= (args["start_iter"] if name == "powersgd" else args["dense_start"]):
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
        results[name] = {
            "bytes_per_step": state.stats.sent / args["steps"],
            "dense_bytes_per_step": state.stats.dense / args["steps"],
            "bytes_cut_total": 1 - state.stats.sent / state.stats.dense,
            "bytes_cut_steady": 1 - sent_steady / max(dense_steady, 1),
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
) -> dict[str, dict]:
    """Train once per hook in ``world`` gloo processes; return per-hook metrics (see module docstring)."""
    args = {
        "hooks": list(hooks), "steps": steps, "n_embd": n_embd, "n_layer": n_layer, "block": block,
        "batch": batch, "lr": lr, "ratio": ratio, "rank": rank, "start_iter": start_iter, "dense_start": dense_start, "optimizer": optimizer, "seed": seed, "timeout_s": 180,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.start_processes(
            _worker, args=(world, _free_port(), args, out), nprocs=world, join=True, start_method=START_METHOD
        )
        return json.loads(Path(out).read_text())


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
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--optimizer", choices=("adamw", "sgd"), default="adamw", help="sgd = momentum 0.9, nesterov"
    )
    parser.add_argument("--hooks", default=",".join(HOOK_NAMES))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw per-hook metrics here")
    a = parser.parse_args(argv)
    hooks = tuple(h for h in a.hooks.split(",") if h)
    if "allreduce" not in hooks:
        hooks = ("allreduce", *hooks)
    res = run_ddp(
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
    )
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    base = res["allreduce"]
    rows = []
    for name in hooks:
        r = res[name]
        rows.append(
            {
                "hook": name,
                "bytes/step": round(r["bytes_per_step"]),
                "dense bytes/step": round(r["dense_bytes_per_step"]),
                "bytes cut (all steps)": round(r["bytes_cut_total"], 4),
                "bytes cut (after start)": round(r["bytes_cut_steady"], 4),
                "val loss": round(r["val_loss"], 4),
                "loss / dense": round(r["val_loss"] / base["val_loss"], 4),
                "ms/step": round(r["step_ms"], 1),
                "replicas in sync": r["replicas_in_sync"],
            }
        )
    return {
        "title": f"DDP gradient compression, {a.world} gloo workers, GPT d={a.n_embd} L={a.n_layer}, "
        f"{a.optimizer} lr={a.lr}, {a.steps} steps",
        "device": f"CPU ({os.cpu_count()} cores), gloo",
        "rows": rows,
        "notes": [
            "bytes = payload one worker contributes per step vs a dense fp32 all-reduce of the same gradients",
            f"top-k ratio={a.ratio} (values + int32 indices), 1bit = packed signs + one fp32 scale per parameter tensor",
            f"PowerSGD rank={a.rank}: dense all-reduce for the first {a.start_iter} steps (torch's start_powerSGD_iter); "
            "'after start' counts only the compressed steps",
            f"top-k/1bit dense warm-up: {a.dense_start} steps ('after start' counts only the compressed steps)",
            "loss = held-out cross-entropy (nats/byte) after the same steps on the same batches; ratio to dense",
            "ms/step on a shared 2-core CPU: communication cost is not representative of a GPU cluster",
        ],
    }

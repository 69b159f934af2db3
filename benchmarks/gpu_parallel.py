"""DDP vs FSDP2 vs FSDP2+TP vs pipeline (1F1B) vs 3D on the kit's GPT: tokens/s and peak memory per GPU.

    python benchmarks/gpu_parallel.py --out DIR [--model gpt2] [--steps 20] [--smoke]

Launches one ``torchrun`` per layout over every visible GPU and records, per layout, tokens/s (all ranks
together, after 3 warm-up steps), peak ``torch.cuda.max_memory_allocated`` per GPU, and the machine. Layouts:

- ``ddp``: ``DistributedDataParallel``;
- ``fsdp2``: ``fully_shard`` per block (``kit.parallel.tensor.parallelize(tp=False)``);
- ``fsdp2-tp``: data 1 x tensor N (``parallelize`` over a ``("data_parallel", "tensor_parallel")`` mesh);
- ``pp``: N stages, ``Schedule1F1B`` with ``2 N`` micro-batches (``kit.parallel.pipeline``);
- ``3d``: pipeline 2 x data N/4 x tensor 2 on one mesh (``kit.parallel.pipeline.parallelize_pipeline``: 1F1B with
  4 micro-batches per replica, FSDP2 and TP inside each stage); needs N divisible by 4 (4 gloo ranks in ``--smoke``).

TP and PP need at least 2 GPUs: NCCL refuses two ranks on one GPU, so on a 1-GPU machine those rows are
SKIPPED with that reason and the multi-rank wiring is proven by ``--smoke`` (2 ranks, gloo, CPU) and
``tests/test_parallel_3d.py``. ``--smoke`` runs every layout on CPU with 2 gloo ranks and the ``debug`` model
(seconds; figures are not speeds). Results go to DIR/gpu_parallel.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

LAYOUTS = ("ddp", "fsdp2", "fsdp2-tp", "pp", "3d")


def _worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh

    from kit.nn import GPT, GPTConfig
    from kit.parallel.pipeline import GPTStage, build_schedule, parallelize_pipeline, pipeline_step
    from kit.parallel.tensor import parallelize

    cuda = torch.cuda.is_available() and not args.smoke
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(0)
    name = "debug" if args.smoke else args.model
    cfg = GPTConfig.from_name(name, dropout=0.0, attn_dropout=0.0, embd_dropout=0.0)
    T = cfg.block_size
    dtype = torch.bfloat16 if cuda else torch.float32
    model = GPT(cfg)
    if args.layout not in ("pp", "3d"):  # a stage moves only its own blocks to the GPU
        model.to(device)
    B = args.batch
    stage = sched = None
    if args.layout == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif args.layout == "fsdp2":
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("data_parallel",))
        parallelize(model, mesh, tp=False, param_dtype=dtype if cuda else None, reduce_dtype=torch.float32)
    elif args.layout == "fsdp2-tp":
        mesh = init_device_mesh(device.type, (1, world), mesh_dim_names=("data_parallel", "tensor_parallel"))
        parallelize(model, mesh, param_dtype=dtype if cuda else None, reduce_dtype=torch.float32)
        B = args.batch * world  # one data-parallel group: the TP ranks share a batch of world x per-GPU size
    elif args.layout == "3d":
        shape = (2, world // 4, 2)
        mesh = init_device_mesh(
            device.type, shape, mesh_dim_names=("pipeline_parallel", "data_parallel", "tensor_parallel")
        )
        pipe = parallelize_pipeline(model, mesh, n_microbatches=4, device=device)
        stage, sched = pipe.stage, pipe.schedule
        del model
        dp = mesh["data_parallel"]
        B = args.batch * 4  # per replica: the 4 ranks of a (pipeline x tensor) group share its batch
    else:
        stage = GPTStage(model, rank, world).to(device)
        del model
        sched = build_schedule(stage, n_microbatches=2 * world, schedule="1f1b", device=device)
        B = args.batch * world
    params = stage.parameters() if stage is not None else model.parameters()
    opt = torch.optim.AdamW(params, lr=1e-4)
    seed = {"ddp": rank, "fsdp2": rank, "3d": dp.get_local_rank() if args.layout == "3d" else 0}
    g = torch.Generator().manual_seed(seed.get(args.layout, 0))
    times = []
    for step in range(args.steps):
        x = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g).to(device)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        # bf16: autocast for DDP and PP, FSDP2's MixedPrecisionPolicy for the FSDP2 layouts
        # (3d: autocast too; its FSDP2 keeps fp32 parameters)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda and args.layout in ("ddp", "pp", "3d")):
            if stage is not None:
                pipeline_step(sched, stage, x[:, :-1], x[:, 1:])
            else:
                logits = model(x[:, :-1])
                F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - t0)
    # tokens per step, all ranks: DDP/FSDP each rank has its own batch; TP/PP ranks share one batch
    tokens = (
        (B * T * world)
        if args.layout in ("ddp", "fsdp2")
        else B * T * (world // 4 if args.layout == "3d" else 1)
    )
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    mems = [None] * world
    dist.all_gather_object(mems, mem)
    if rank == 0:
        step_s = sum(times) / max(1, len(times))
        row = {
            "layout": args.layout,
            "ranks": world,
            "model": name,
            "tokens_per_step": tokens,
            "tokens_per_s": tokens / step_s if times else None,
            "peak_gib_per_gpu": mems,
        }
        Path(args.result).write_text(json.dumps(row))
    dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """Run every layout under torchrun; write DIR/gpu_parallel.json and .md; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--model", default="gpt2", help="a GPTConfig preset name (gpt2, gpt2-medium, tiny)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="sequences per GPU (DDP/FSDP) or per pipeline stage")
    p.add_argument("--smoke", action="store_true", help="2 gloo ranks on CPU (4 for 3d), debug model")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--layout", default="ddp", help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = 2 if args.smoke else torch.cuda.device_count()
    machine = "CPU (smoke, gloo)" if args.smoke else (torch.cuda.get_device_name(0) if n else "no CUDA")
    rows, ok = [], True
    for layout in args.layouts.split(","):
        if n == 0:
            rows.append({"layout": layout, "status": "SKIP", "reason": "no CUDA device (use --smoke on CPU)"})
            continue
        if layout in ("fsdp2-tp", "pp") and n < 2:
            rows.append(
                {"layout": layout, "status": "SKIP", "reason": "needs >= 2 GPUs (NCCL: one rank per GPU)"}
            )
            continue
        ranks = 4 if layout == "3d" and args.smoke else n
        if layout == "3d" and ranks % 4:
            rows.append(
                {"layout": layout, "status": "SKIP", "reason": "needs a multiple of 4 GPUs (pp 2 x tp 2)"}
            )
            continue
        result = out / f"gpu_parallel_{layout}.json"
        steps = min(args.steps, 5) if args.smoke else args.steps
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={ranks}",
            f"--master-port={_port()}",
            __file__,
            "--worker",
            f"--layout={layout}",
            f"--result={result}",
            f"--model={args.model}",
            f"--steps={steps}",
            f"--batch={args.batch}",
        ] + (["--smoke"] if args.smoke else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not result.exists():
            ok = False
            rows.append({"layout": layout, "status": "FAIL", "reason": proc.stderr[-1500:]})
        else:
            rows.append({**json.loads(result.read_text()), "status": "PASS"})
            result.unlink()
        print(json.dumps(rows[-1])[:400], flush=True)
    report = {"machine": machine, "torch": torch.__version__, "rows": rows}
    (out / "gpu_parallel.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# DDP / FSDP2 / FSDP2+TP / PP / 3D on {machine} (torch {torch.__version__})",
        "",
        "| layout | ranks | model | tokens/s | peak GiB per GPU | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        tps = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-"
        mem = ", ".join(f"{m:.2f}" for m in r.get("peak_gib_per_gpu", []) or []) or "-"
        lines.append(
            f"| {r['layout']} | {r.get('ranks', '-')} | {r.get('model', '-')} | {tps} | {mem} | "
            f"{r['status']} {r.get('reason', '')[:80]} |"
        )
    (out / "gpu_parallel.md").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

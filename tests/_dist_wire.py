"""Worker code for tests/test_wire_bytes.py: runs in forked gloo processes (not collected by pytest)."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kit.parallel.comm_hooks import OneBitAdamHookState, make_comm_hook, onebit_adam_hook
from kit.parallel.onebit_adam import OneBitAdamW
from kit.parallel.two_phase import ErrorFeedback, SignCodec, TopKCodec, compressed_allreduce

CASES = (
    ("allreduce", {}),
    ("fp16", {}),
    ("powersgd", {"powersgd_start_iter": 2}),
    ("topk", {"scheme": "2phase", "topk_ratio": 0.05}),
    ("1bit", {"scheme": "2phase"}),
    ("topk", {"scheme": "allgather", "topk_ratio": 0.05}),
    ("1bit", {"scheme": "allgather"}),
)


def _recording(calls: list) -> None:
    """Wrap the three collectives so every call logs (kind, bytes of the tensor passed in)."""
    originals = {k: getattr(dist, k) for k in ("all_reduce", "all_gather", "all_to_all_single")}

    def wrap(kind: str, fn, pick):
        def inner(*args, **kwargs):
            t = pick(*args)
            calls.append((kind, t.numel() * t.element_size()))
            return fn(*args, **kwargs)

        return inner

    dist.all_reduce = wrap("all_reduce", originals["all_reduce"], lambda t, *a: t)
    dist.all_gather = wrap("all_gather", originals["all_gather"], lambda out, t, *a: t)
    dist.all_to_all_single = wrap("all_to_all", originals["all_to_all_single"], lambda out, t, *a: t)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.Tanh(), nn.Linear(40, 8))


def worker(rank: int, world: int, port: int, out: str, steps: int) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    calls: list = []
    _recording(calls)
    gen = torch.Generator().manual_seed(rank)
    results = []
    for name, kwargs in (*CASES, ("1bit-adam", {})):
        model = _model()
        numel = sum(p.numel() for p in model.parameters())
        ddp = DistributedDataParallel(model, bucket_cap_mb=1024)
        if name == "1bit-adam":
            state, hook = OneBitAdamHookState(), onebit_adam_hook
            opt = OneBitAdamW(model.parameters(), lr=1e-2, freeze_step=1)
            opt.stats, state.optimizer = state.stats, opt
        else:
            state, hook = make_comm_hook(name, **kwargs)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
        ddp.register_comm_hook(state, hook)
        calls.clear()
        for _ in range(steps):
            opt.zero_grad()
            ddp(torch.randn(16, 24, generator=gen)).pow(2).mean().backward()
            opt.step()
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        results.append(
            {
                "name": name, "kwargs": kwargs, "numel": numel, "calls": list(calls[:-1]),
                "sent": state.stats.sent, "dense": state.stats.dense,
                "in_sync": all(torch.equal(g, gathered[0]) for g in gathered),
            }
        )  # fmt: skip
        del ddp, opt
    # error feedback conserves the signal through the two-phase scheme at this W
    for codec in (SignCodec(), TopKCodec(0.1)):
        ef = ErrorFeedback()
        total_in, total_out = torch.zeros(101, dtype=torch.float64), torch.zeros(101, dtype=torch.float64)
        vectors = [torch.randn(101, generator=gen) for _ in range(12)]
        for v in vectors:
            total_in += v.double()
            total_out += compressed_allreduce(v, codec, ef).double()
        world_in = total_in.clone()
        dist.all_reduce(world_in)
        worker_err = ef.worker.double().clone()
        dist.all_reduce(worker_err)
        server = [torch.empty_like(ef.server) for _ in range(world)]
        dist.all_gather(server, ef.server)
        server_err = torch.cat(server).double()[:101]
        gap = (world_in / world - (total_out + worker_err[:101] / world + server_err)).abs().max()
        results.append({"name": f"conserve-{type(codec).__name__}", "gap": float(gap)})
    results += _two_phase_streams(rank, world)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


# Two-phase outputs for tests/test_wire_bytes.py to compare with its reference of Tang et al.'s algorithm:
# four tensors whose magnitudes differ up to 10^4x, as a bucket holding LayerNorm weights and biases does.
SEGMENTS = (5, 40, 3, 53)
MAGNITUDES = (1e-3, 1.0, 10.0, 1e-2)
LAYOUTS = {"tensor": (SEGMENTS, None), "tensor-block16": (SEGMENTS, 16), "chunk": (None, None)}
STREAM_STEPS, FIXED_STEPS = 30, 200


def stream_input(step: int, rank: int) -> torch.Tensor:
    """Worker ``rank``'s vector at ``step`` (``step=-1``: the fixed vector of the telescoping check)."""
    gen = torch.Generator().manual_seed(10_000 * (step + 1) + rank)
    scale = torch.repeat_interleave(torch.tensor(MAGNITUDES), torch.tensor(SEGMENTS))
    return torch.randn(sum(SEGMENTS), generator=gen) * scale


def _two_phase_streams(rank: int, world: int) -> list[dict]:
    out = []
    for layout, (segments, block) in LAYOUTS.items():
        segs = list(segments) if segments is not None else None
        ef = ErrorFeedback()
        outputs = [
            compressed_allreduce(stream_input(t, rank), SignCodec(block), ef, segments=segs).tolist()
            for t in range(STREAM_STEPS)
        ]
        ef, fixed = ErrorFeedback(), stream_input(-1, rank)
        total = torch.zeros(fixed.numel(), dtype=torch.float64)
        for _ in range(FIXED_STEPS):
            total += compressed_allreduce(fixed, SignCodec(block), ef, segments=segs).double()
        out.append(
            {"name": f"stream-{layout}", "outputs": outputs, "fixed_mean": (total / FIXED_STEPS).tolist()}
        )
    return out


def main(world: int, out: str, steps: int) -> None:
    """Fork ``world`` gloo workers from this fresh process (forking pytest itself can inherit live threads)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(world, port, out, steps), nprocs=world, start_method="fork")


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))

"""GPU checks of the architecture variants, in one run (about 3 minutes on an H100/H200).

1. Sliding-window attention (the kit's ``sliding_window_attention``, FlexAttention with a cached BlockMask)
   against dense causal SDPA (flash), forward + backward in bf16 at 4k, 16k and 64k tokens, with peak memory;
   a raw compiled ``flex_attention`` call with the same mask is timed beside it as the reference.
   The issue's bar: at least 10x faster than dense at 64k, memory linear in length (a raw call measured ~17x).
2. Activation checkpointing on GPT-2 124M, batch 16 x 1024, bf16 autocast + fused AdamW: peak memory and step
   time without checkpointing and with each mode of ``kit.nn.transforms``, then the full mode at larger
   batch and length to show where the saving approaches the documented 75%. The bar: >= 50% less peak memory for
   <= 15% slower steps.

    python benchmarks/gpu_architecture.py --out DIR          # on a CUDA machine
    python benchmarks/gpu_architecture.py --smoke --out DIR  # tiny shapes, any device (checks the script)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import cuda_sync, device_name
from kit.nn import GPT, GPTConfig
from kit.nn.layers import dense_attention, sliding_window_attention
from kit.nn.transforms import apply_transforms


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _timed(fn, iters: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        cuda_sync()
        t0 = time.perf_counter()
        fn()
        cuda_sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times) - min(times)


def _attention_at(
    T: int, a: argparse.Namespace, device: torch.device, dtype: torch.dtype, raw_flex
) -> list[dict]:
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = (
        torch.randn(1, a.heads, T, a.head_dim, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    g = torch.randn_like(q)
    window = a.window

    def sliding_mask(b, h, qi, ki):
        return (qi >= ki) & (qi - ki < window)

    block_mask = create_block_mask(sliding_mask, None, None, T, T, device=device)
    backend = "flex" if device.type == "cuda" else "sdpa"  # CPU smoke: flex has no CPU backward
    sides = {
        "dense causal SDPA": lambda: dense_attention(q, k, v, causal=True),
        f"kit sliding window {window}": lambda: sliding_window_attention(
            q, k, v, window=window, causal=True, backend=backend
        ),
    }
    if device.type == "cuda":
        sides[f"raw flex_attention {window}"] = lambda: raw_flex(q, k, v, block_mask=block_mask)
    result = {}
    for name, fwd in sides.items():

        def step(fwd=fwd):
            fwd().backward(g)
            q.grad = k.grad = v.grad = None

        _peak_reset()
        med, spread = _timed(step, a.iters, a.warmup)
        result[name] = (med, spread, _peak_mb())
    base = result["dense causal SDPA"][0]
    check = {}
    if a.lengths[0] == T:  # the two paths agree (a global token too): checked once, SDPA's mask is T x T
        with torch.no_grad():
            kw = {"window": window, "global_positions": (0, T // 2), "causal": True}
            flex = sliding_window_attention(q, k, v, backend=backend, **kw).float()
            sdpa = sliding_window_attention(q, k, v, backend="sdpa", **kw).float()
        check = {"max |flex - sdpa|": float((flex - sdpa).abs().max())}
    return [
        {
            "part": "attention",
            "tokens": T,
            "side": name,
            "ms fwd+bwd": round(med * 1e3, 3),
            "spread ms": round(spread * 1e3, 3),
            "peak MB": None if peak is None else round(peak, 1),
            "speedup vs dense": round(base / med, 2),
            **(check if name.startswith("kit") else {}),
        }
        for name, (med, spread, peak) in result.items()
    ]


def attention_bench(a: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from torch.nn.attention.flex_attention import flex_attention

    raw_flex = torch.compile(flex_attention) if device.type == "cuda" else flex_attention
    rows = []
    for T in a.lengths:
        rows += _attention_at(T, a, device, dtype, raw_flex)
    return rows


def _checkpoint_run(
    a: argparse.Namespace, device: torch.device, batch: int, block: int, mode: str, every: int
) -> tuple[float, float, float | None]:
    cuda = device.type == "cuda"
    cfg = GPTConfig.from_name(a.config, block_size=block, dropout=0.0, attn_dropout=0.0, embd_dropout=0.0)
    torch.manual_seed(0)
    model = apply_transforms(GPT(cfg).to(device), activation_checkpointing=mode, checkpoint_every=every)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda or None)
    x = torch.randint(0, cfg.vocab_size, (batch, block), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)).float(), x.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _peak_reset()
    med, spread = _timed(step, a.iters, a.warmup)
    return med, spread, _peak_mb()


def checkpoint_bench(a: argparse.Namespace, device: torch.device) -> list[dict]:
    modes = [("none", 1), ("full", 1), ("full", 2), ("attention", 1), ("ffn", 1)]
    shapes = [(a.batch, a.block, m, e) for m, e in modes]
    shapes += [(b, t, m, 1) for b, t in a.sweep for m in ("none", "full")]
    rows = []
    base: dict[tuple[int, int], tuple[float, float]] = {}
    for batch, block, mode, every in shapes:
        label = mode + (f", every {every}" if every > 1 else "")
        try:
            med, spread, peak = _checkpoint_run(a, device, batch, block, mode, every)
        except torch.OutOfMemoryError:
            rows.append(
                {"part": "checkpointing", "batch x T": f"{batch}x{block}", "mode": label, "peak MB": "OOM"}
            )
            continue
        if mode == "none":
            base[(batch, block)] = (med, peak or 0.0)
        b_med, b_peak = base.get((batch, block), (med, peak or 0.0))
        rows.append(
            {
                "part": "checkpointing",
                "batch x T": f"{batch}x{block}",
                "mode": label,
                "ms/step": round(med * 1e3, 1),
                "spread ms": round(spread * 1e3, 1),
                "peak MB": None if peak is None else round(peak),
                "memory saved": None if not peak or not b_peak else round(1 - peak / b_peak, 3),
                "time vs none": round(med / b_med, 3),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/kit-gpu-architecture"))
    p.add_argument("--smoke", action="store_true", help="tiny shapes that run anywhere in seconds")
    p.add_argument("--parts", nargs="+", default=["attention", "checkpointing"])
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.smoke:
        a.lengths, a.heads, a.head_dim, a.window = [256, 512], 2, 16, 64
        a.config, a.batch, a.block, a.sweep = "debug", 2, 16, [(4, 16)]
        a.iters, a.warmup = 2, 1
    else:
        a.lengths, a.heads, a.head_dim, a.window = [4096, 16384, 65536], 12, 64, 512
        a.config, a.batch, a.block, a.sweep = "gpt2", 16, 1024, [(32, 1024), (16, 2048), (8, 4096)]
        a.iters, a.warmup = 10, 3
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    if "attention" in a.parts:
        rows += attention_bench(a, device, dtype)
    if "checkpointing" in a.parts:
        rows += checkpoint_bench(a, device)
    result = {
        "title": "Architecture on GPU: sliding-window attention vs dense; activation checkpointing",
        "device": device_name(),
        "torch": torch.__version__,
        "smoke": a.smoke,
        "rows": rows,
        "notes": [
            f"attention: B=1, {a.heads} heads x {a.head_dim}, causal, window {a.window}, {dtype}, forward+backward, "
            f"median of {a.iters} after {a.warmup} warm-up (compile included in warm-up)",
            f"checkpointing: GPT {a.config}, bf16 autocast (CUDA), AdamW step included; peak = "
            "torch.cuda.max_memory_allocated over the timed steps",
        ],
    }
    a.out.mkdir(parents=True, exist_ok=True)
    suffix = "-smoke" if a.smoke else ""
    (a.out / f"gpu_architecture{suffix}.json").write_text(json.dumps(result, indent=1))
    for row in rows:
        print(json.dumps(row))
    return result


if __name__ == "__main__":
    main()

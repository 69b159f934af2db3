"""Architecture variants against their dense baselines, each pair measured in the same run.

Three parts (``--parts``, default all):

- ``moe-speed``: one Switch MoE layer (top-1, E experts, capacity factor 1.25) against the dense MLP with the
  same *active* parameters (each token uses one expert of the MLP's shape), forward + backward, tokens/s.
  Sides alternate, each repeat times ``--iters`` iterations, and the median is reported.
- ``moe-quality``: ``gpt-tiny`` with a dense MLP against ``gpt-tiny`` with an MoE feed-forward, trained on the
  embedded corpus with the same data order; validation loss at equal steps, and the dense model's loss at
  equal *executed* FLOPs (MoE compute includes the router and the capacity padding, so the dense side gets
  that many more steps). This tests the claim that MoE lowers the energy per quality at toy scale.
- ``checkpointing``: activation bytes saved for backward (counted with ``saved_tensors_hooks``, exact on any
  device) and step time, without checkpointing and with each mode of ``kit.nn.transforms``.

Wall-clock figures on a shared CPU are noisy: use ratios from one run, on an idle machine.

    python -m benchmarks architecture                       # all parts (about 10 minutes on 2 CPU cores)
    python -m benchmarks architecture --parts moe-speed --iters 5 --repeats 2 --quality-steps 20  # smoke
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks._common import cuda_sync, device_name
from kit.nn import GPT, GPTConfig
from kit.nn.layers import MLP, SwitchMoE, aux_outputs
from kit.nn.transforms import apply_transforms

PARTS = ("moe-speed", "moe-quality", "checkpointing")


def _time(fn, iters: int) -> float:
    cuda_sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    cuda_sync()
    return (time.perf_counter() - t0) / iters


def moe_speed(a: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[str]]:
    cfg = GPTConfig.from_name(
        "tiny", n_embd=a.width, n_head=4, dropout=0.0, ffn="moe", moe={"experts": a.experts, "jitter": 0.0}
    )
    dense, moe = MLP.from_config(cfg).to(device), SwitchMoE.from_config(cfg).to(device)
    x = torch.randn(a.batch, a.block, a.width, device=device, requires_grad=True)

    def step(layer):
        def run():
            layer(x).sum().backward()
            x.grad = None

        return run

    times = {"dense MLP": [], f"Switch MoE, {a.experts} experts": []}
    layers = dict(zip(times, (dense, moe)))
    for layer in layers.values():  # warm-up
        _time(step(layer), 2)
    for r in range(a.repeats):
        order = list(layers.items()) if r % 2 == 0 else list(layers.items())[::-1]
        for name, layer in order:
            times[name].append(_time(step(layer), a.iters))
    tokens = a.batch * a.block
    rows = []
    base = statistics.median(times["dense MLP"])
    for name, layer in layers.items():
        med = statistics.median(times[name])
        total = sum(p.numel() for p in layer.parameters())
        active = total if layer is dense else total - layer.inactive_params()
        rows.append(
            {
                "part": "moe-speed",
                "layer": name,
                "params": total,
                "active params": int(active),
                "tokens/s": round(tokens / med),
                "ms/iter": round(med * 1e3, 2),
                "spread ms": round((max(times[name]) - min(times[name])) * 1e3, 2),
                "time vs dense": round(med / base, 2),
            }
        )
    notes = [
        f"moe-speed: forward+backward of one layer on {a.batch}x{a.block} tokens of width {a.width}; median of "
        f"{a.repeats} alternating repeats of {a.iters} iterations; capacity factor 1.25 (the experts compute "
        "1.25x the dense slots), dispatch vectorised (no loop over tokens or experts)"
    ]
    return rows, notes


def _train(
    cfg: GPTConfig, dm, steps: int, lr: float, seed: int, device: torch.device, batch: int = 16
) -> float:
    """Train ``steps`` AdamW steps (aux losses included) in a seeded batch order; return the validation loss."""
    torch.manual_seed(seed)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)))
    g = torch.Generator().manual_seed(seed)
    train = dm.train_set
    step = 0
    model.train()
    while step < steps:
        for idx in torch.randperm(len(train), generator=g)[: len(train) // batch * batch].view(-1, batch):
            if step >= steps:
                break
            x, y = (torch.stack(t).to(device) for t in zip(*(train[int(j)] for j in idx)))
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            aux = aux_outputs(model)[0]
            (loss if aux is None else loss + aux).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
    return _val_loss(model, dm, device)


@torch.no_grad()
def _val_loss(model: GPT, dm, device: torch.device) -> float:
    model.eval()
    total, n = 0.0, 0
    for x, y in dm.val_dataloader():
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        n += y.numel()
    return total / n


def executed_flops_per_token(model: GPT, seq_len: int) -> float:
    """Active FLOPs plus what the MoE really computes beyond them: capacity padding (factor - 1 of the active
    expert work; the buffer is always full-size) — the compute a step costs, not just what tokens use."""
    flops = model.flops_per_token(seq_len)
    for m in model.modules():
        if isinstance(m, SwitchMoE):
            active_expert = m.expert_params() * m.top_k / m.n_experts
            flops += 6 * active_expert * (max(m.capacity_factor, 1.0) - 1.0)
    return flops


def moe_quality(a: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[str]]:
    from kit.datamodules.text import TextDataModule

    dm = TextDataModule(vocab_size=2048, block_size=128, batch_size=16, val_fraction=0.1)
    dm.prepare_data()
    dm.setup("fit")
    base = {"vocab_size": dm.vocab_size, "dropout": 0.0, "attn_dropout": 0.0, "embd_dropout": 0.0}
    dense_cfg = GPTConfig.from_name("tiny", **base)
    moe_cfg = GPTConfig.from_name("tiny", **base, ffn="moe", moe={"experts": a.experts})
    ratio = executed_flops_per_token(GPT(moe_cfg), 128) / executed_flops_per_token(GPT(dense_cfg), 128)
    dense_steps_equal_flops = math.ceil(a.quality_steps * ratio)
    rows = []
    for name, cfg, steps in (
        ("dense (gpt-tiny)", dense_cfg, a.quality_steps),
        (f"MoE {a.experts} experts", moe_cfg, a.quality_steps),
        ("dense at the MoE's executed FLOPs", dense_cfg, dense_steps_equal_flops),
    ):
        model = GPT(cfg)
        loss = _train(cfg, dm, steps, a.lr, a.seed, device)
        rows.append(
            {
                "part": "moe-quality",
                "layer": name,
                "params": model.num_params(),
                "active params": int(model.num_active_params()),
                "steps": steps,
                "train FLOPs": f"{executed_flops_per_token(model, 128) * steps * 16 * 128:.3g}",
                "val loss": round(loss, 4),
            }
        )
    notes = [
        f"moe-quality: the embedded pydoc corpus, vocab 2048, batch 16x128, AdamW lr {a.lr}, warmup 10%, no "
        f"dropout, seed {a.seed}, same batch order on every side; executed FLOPs/token MoE/dense = {ratio:.3f}"
    ]
    return rows, notes


def _saved_bytes(model: GPT, x: torch.Tensor) -> int:
    """Bytes of distinct storages kept for backward by one forward: what autograd saves (seen through
    ``saved_tensors_hooks``) plus the inputs each checkpointed region holds for its recompute (seen through
    forward pre-hooks on the wrappers); parameters excluded."""
    seen: dict[int, int] = {}

    def note(t: torch.Tensor) -> None:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()

    def pack(t: torch.Tensor):
        note(t)
        return t

    def pre_hook(module, args):
        for t in args:
            if isinstance(t, torch.Tensor):
                note(t)

    hooks = [
        m.register_forward_pre_hook(pre_hook)
        for m in model.modules()
        if type(m).__name__ == "CheckpointWrapper"
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    out.float().sum().backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def checkpointing(a: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[str]]:
    modes = [("none", 1), ("full", 1), ("full", 2), ("attention", 1), ("ffn", 1)]
    cfg = GPTConfig.from_name("tiny", vocab_size=2048, dropout=0.0, attn_dropout=0.0, embd_dropout=0.0)
    x = torch.randint(0, 2048, (a.batch, a.block), device=device)
    models = {}
    for mode, every in modes:
        torch.manual_seed(0)
        models[(mode, every)] = apply_transforms(
            GPT(cfg).to(device), activation_checkpointing=mode, checkpoint_every=every
        )
    times: dict = {k: [] for k in models}
    for m in models.values():
        _time(lambda m=m: m(x).sum().backward(), 1)
    for r in range(a.repeats):
        keys = list(models) if r % 2 == 0 else list(models)[::-1]
        for k in keys:
            m = models[k]
            times[k].append(_time(lambda m=m: m(x).sum().backward(), a.iters))
    base_bytes = _saved_bytes(models[("none", 1)], x)
    base_t = statistics.median(times[("none", 1)])
    rows = []
    for (mode, every), m in models.items():
        saved = _saved_bytes(m, x)
        med = statistics.median(times[(mode, every)])
        rows.append(
            {
                "part": "checkpointing",
                "layer": f"{mode}" + (f", every {every}" if every > 1 else ""),
                "saved activations MB": round(saved / 2**20, 2),
                "activation memory vs none": round(saved / base_bytes, 3),
                "ms/step": round(med * 1e3, 1),
                "time vs none": round(med / base_t, 2),
            }
        )
    notes = [
        f"checkpointing: gpt-tiny shape, batch {a.batch}x{a.block}, fp32, forward+backward; saved activations are "
        "the distinct storages kept for backward (autograd's saved tensors plus the checkpointed regions' inputs, "
        "parameters excluded), counted exactly; peak memory on "
        "GPU is in benchmarks/gpu_architecture.py"
    ]
    return rows, notes


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks architecture", description=__doc__)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (pinned for comparable runs)"
    )
    a = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    rows, notes = [], []
    for part, fn in (
        ("moe-speed", moe_speed),
        ("moe-quality", moe_quality),
        ("checkpointing", checkpointing),
    ):
        if part in a.parts:
            r, n = fn(a, device)
            rows += r
            notes += n
    return {
        "title": "Architecture variants: Switch MoE vs dense FFN, activation checkpointing",
        "device": device_name(),
        "rows": rows,
        "notes": notes,
    }

"""``kit plan``: training FLOPs, GPU-time and memory per GPU for a model size, token count and GPU.

Example:
    kit plan --params 7e9 --tokens 1e12 --gpu h100-80gb --mfu 0.4 --gpus 256
    kit plan --model llama3-70b --tokens 15e12 --gpus 1024
"""

from __future__ import annotations

import argparse
import sys

from kit.health.planner import (
    GPUS,
    STRATEGIES,
    Layout,
    TrainingPlan,
    gpus_for_days,
    preset_shape,
    suggest_layout,
)

__all__ = ["build_parser", "main", "plot_memory", "render", "render_layout"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kit plan``."""
    p = argparse.ArgumentParser(prog="kit plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", type=float, help="parameter count, e.g. 7e9")
    p.add_argument(
        "--model",
        default=None,
        help="a GPTConfig preset (llama3-8b, llama3-70b, smollm-135m, gpt2...): fills --params, --n-layer, "
        "--d-model, --n-head and --seq-len unless given",
    )
    p.add_argument("--tokens", type=float, help="training tokens, e.g. 1e12")
    p.add_argument("--gpu", default="h100-80gb", help=f"one of: {', '.join(GPUS)}")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    p.add_argument(
        "--gpus", type=int, default=None, help="GPU count for the time estimate (default: smallest that fits)"
    )
    p.add_argument(
        "--days", type=float, default=None, help="also report the GPUs needed to finish in this many days"
    )
    p.add_argument(
        "--seq-len", type=int, default=None, help="sequence length (default: 2048, or the --model's)"
    )
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per micro-step")
    p.add_argument(
        "--n-layer", type=int, default=None, help="layers (default: guessed from --params, d/L = 128)"
    )
    p.add_argument("--d-model", type=int, default=None, help="width (default: guessed from --params)")
    p.add_argument("--no-flash", action="store_true", help="attention matrix is materialised")
    p.add_argument("--list-gpus", action="store_true", help="print the GPU table and exit")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node: the tensor-parallel limit")
    p.add_argument("--n-head", type=int, default=None, help="attention heads (default: d_model / 128)")
    p.add_argument(
        "--microbatches", type=int, default=None, help="pipeline micro-batches per step (default: 4 x stages)"
    )
    p.add_argument("--plot", default=None, help="write a PNG bar chart of memory per GPU per strategy here")
    return p


def _gb(x: float) -> str:
    return f"{x / 1e9:,.1f}"


def render(plan: TrainingPlan, days: float | None = None) -> str:
    """The plan as a plain-text report."""
    lines = [
        f"model: {plan.params:.3g} params (n_layer={plan.n_layer}, d_model={plan.d_model}), seq {plan.seq_len}, "
        f"micro-batch {plan.micro_batch}",
        f"data: {plan.tokens:.3g} tokens; GPU: {plan.gpu} ({plan.spec.peak_flops / 1e12:.0f} TFLOP/s bf16, "
        f"{plan.spec.memory_gb:g} GB); MFU {plan.mfu}",
        "",
        f"training FLOPs: {plan.total_flops:.3e}  (6ND = {6 * plan.params * plan.tokens:.3e}; "
        f"attention {100 * plan.attention_share:.1f}%)",
        f"GPU-hours: {plan.gpu_hours:,.0f};  on {plan.n_gpus} GPUs: {plan.days:,.1f} days",
    ]
    if days:
        lines.append(
            f"GPUs to finish in {days:g} days: {gpus_for_days(plan.total_flops, plan.gpu, plan.mfu, days):,}"
        )
    lines += [
        "",
        f"memory per GPU (GB) at {plan.n_gpus} GPUs; usable = 90% of {plan.spec.memory_gb:g} GB",
        f"{'strategy':<12}{'ckpt':>5}{'weights':>10}{'grads':>10}{'optim':>10}{'activ':>10}{'total':>10}"
        f"{'fits':>6}{'min GPUs':>10}",
    ]
    cap = plan.spec.memory_gb * 1e9 * 0.9
    for s in STRATEGIES:
        for c in (False, True):
            m = plan.memory(s, c)
            need = plan.fits[f"{s}{'+ckpt' if c else ''}"]
            lines.append(
                f"{s:<12}{'yes' if c else 'no':>5}{_gb(m.weights):>10}{_gb(m.gradients):>10}{_gb(m.optimizer):>10}"
                f"{_gb(m.activations):>10}{_gb(m.total):>10}{'yes' if m.total <= cap else 'no':>6}"
                f"{need if need is not None else 'never':>10}"
            )
    best = min(((v, k) for k, v in plan.fits.items() if v is not None), default=None)
    lines += [
        "",
        f"smallest GPU count that fits: {best[0]} ({best[1]})" if best else "does not fit under any strategy",
        "(the table above is data parallel only; offload is not modelled)",
    ]
    return "\n".join(lines)


def render_layout(layout: Layout, gpu_memory_gb: float) -> str:
    """The suggested DP x TP x PP layout as text lines."""
    m = layout.memory
    comm = ", ".join(f"{k.upper()} {v / 1e9:,.2f} GB" for k, v in layout.comm.items())
    return "\n\n" + "\n".join(
        [
            f"suggested 3D layout on {layout.n_gpus} GPUs: data {layout.dp} x tensor {layout.tp} x pipeline "
            f"{layout.pp} (micro-batches {layout.n_microbatches}; TP inside a node, PP across nodes, DP the rest)",
            f"  memory per GPU: {_gb(m.total)} GB of {gpu_memory_gb:g} (weights {_gb(m.weights)}, grads "
            f"{_gb(m.gradients)}, optim {_gb(m.optimizer)} ZeRO-1 over DP, activations {_gb(m.activations)} "
            f"with checkpointing){'' if layout.fits else '  DOES NOT FIT: add GPUs'}",
            f"  pipeline bubble (p-1)/(m+p-1): {100 * layout.bubble:.1f}%",
            f"  sent per GPU per step: {comm}",
        ]
    )


def plot_memory(plan: TrainingPlan, layout: Layout, path: str) -> str:
    """Write a bar chart of memory per GPU (stacked by kind) for every strategy and the 3D layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{s}{'+ckpt' if c else ''}", plan.memory(s, c)) for s in STRATEGIES for c in (False, True)]
    rows.append((f"3D d{layout.dp}t{layout.tp}p{layout.pp}", layout.memory))
    kinds = ("weights", "gradients", "optimizer", "activations", "buffers")
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = [0.0] * len(rows)
    for kind in kinds:
        vals = [getattr(m, kind) / 1e9 for _, m in rows]
        ax.bar([n for n, _ in rows], vals, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.axhline(plan.spec.memory_gb, color="k", linestyle="--", label=f"{plan.gpu} memory")
    ax.set_ylabel("GB per GPU")
    ax.set_title(f"{plan.params:.3g} params on {plan.n_gpus} x {plan.gpu}")
    ax.legend(fontsize=7)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run ``kit plan``; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.list_gpus:
        print(f"{'gpu':<12}{'bf16 TFLOP/s':>14}{'memory GB':>11}  note")
        for g in GPUS.values():
            print(f"{g.name:<12}{g.peak_flops / 1e12:>14.0f}{g.memory_gb:>11g}  {g.note}")
        return 0
    n_kv_head = None
    if args.model is not None:
        try:
            shape = preset_shape(args.model)
        except ValueError as err:
            print(f"kit plan: {err}", file=sys.stderr)
            return 2
        n_kv_head = shape["n_kv_head"]
        for arg, key in (
            ("params", "params"),
            ("n_layer", "n_layer"),
            ("d_model", "d_model"),
            ("n_head", "n_head"),
            ("seq_len", "seq_len"),
        ):
            if getattr(args, arg) is None:
                setattr(args, arg, shape[key])
    args.seq_len = args.seq_len or 2048
    if args.params is None or args.tokens is None:
        build_parser().error(
            "--tokens and --params (or --model) are required, e.g. --params 7e9 --tokens 1e12 or --model llama3-8b"
        )
    try:
        plan = TrainingPlan(
            params=args.params,
            tokens=args.tokens,
            gpu=args.gpu,
            mfu=args.mfu,
            n_gpus=args.gpus,
            seq_len=args.seq_len,
            micro_batch=args.micro_batch,
            n_layer=args.n_layer,
            d_model=args.d_model,
            flash_attention=not args.no_flash,
        )
    except ValueError as err:
        print(f"kit plan: {err}", file=sys.stderr)
        return 2
    try:
        layout = suggest_layout(
            plan.params,
            plan.n_gpus,
            plan.gpu,
            gpus_per_node=args.gpus_per_node,
            n_layer=plan.n_layer,
            d_model=plan.d_model,
            n_head=args.n_head,
            n_kv_head=n_kv_head,
            seq_len=plan.seq_len,
            micro_batch=plan.micro_batch,
            n_microbatches=args.microbatches,
            flash_attention=plan.flash_attention,
        )
    except ValueError as err:
        print(f"kit plan: {err}", file=sys.stderr)
        return 2
    print(render(plan, args.days) + render_layout(layout, plan.spec.memory_gb))
    if args.plot:
        print(f"memory plot: {plot_memory(plan, layout, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Transfer learning: full fine-tune vs LoRA vs adapters vs prompt tuning vs QLoRA on one task and budget.

Stage 1 pretrains a bidirectional backbone with masked-LM + next-sentence prediction (``MaskedLM`` on
``MLMDataModule``), or loads ``--pretrain-ckpt``. Stage 2 fine-tunes it on the 6-topic passage task
(``TopicDataModule``, ``--train-fraction`` of the labels) once per method, same seed, batches and step count,
plus a full fine-tune from a random start as the baseline that shows what pretraining buys.

Columns: test accuracy and macro-F1; trainable share; optimizer-state bytes as held by the optimizer after the
first step; checkpoint per task (``torch.save`` of the trainable tensors, head included); peak memory (CUDA:
``torch.cuda.max_memory_allocated`` over the fine-tune; CPU: weights + gradients + optimizer state in bytes,
activations not counted, since the process's RSS cannot be split per method); median step time.

Run: ``python -m benchmarks transfer`` (CPU: about 10 minutes on an idle 2-core machine), ``--smoke`` for a
seconds-long check, or ``python benchmarks/gpu_transfer.py`` on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks.__main__ import out_dir
from benchmarks._common import cuda_sync, device_name, progress

METHODS = ("full", "lora", "adapters", "prompt", "qlora")
LR = {"full": 1e-3, "lora": 3e-3, "adapters": 3e-3, "prompt": 3e-2, "qlora": 3e-3}


class StepTimer(pl.Callback):
    """Wall time of each optimizer step (batch start to batch end), GPU work included."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        cuda_sync()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        cuda_sync()
        self.times.append(time.perf_counter() - self._t)


def _trainer(steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def pretrain(a: argparse.Namespace, config) -> tuple[Path, dict]:
    from kit.datamodules.transfer import MLMDataModule
    from kit.models.masked_lm import MaskedLM

    pl.seed_everything(a.seed)
    dm = MLMDataModule(vocab_size=a.vocab, block_size=a.block, batch_size=a.batch, nsp=a.nsp, seed=a.seed)
    model = MaskedLM(
        config, nsp=a.nsp, lr=a.pretrain_lr, warmup_steps=max(1, a.pretrain_steps // 20), schedule="cosine"
    )
    trainer = _trainer(a.pretrain_steps, val_check_interval=a.pretrain_steps, check_val_every_n_epoch=None)
    progress(f"pretraining {a.pretrain_steps} steps")
    trainer.fit(model, dm)
    progress(f"pretrained: {dict(trainer.callback_metrics)}")
    path = Path(a.workdir) / "pretrain.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path, {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def finetune(a: argparse.Namespace, dm, method: str, init_from: str | None, config, draw: int) -> dict:
    from kit.models.sequence_classifier import SequenceClassifier
    from kit.nn.peft import adapter_state_dict, cost_report

    pl.seed_everything(draw)
    optimizer = "adamw8bit" if method == "qlora" else "adamw"
    model = SequenceClassifier(
        config=None if init_from else config,
        init_from=init_from,
        peft={
            "method": method,
            "lora_r": a.lora_r,
            "adapter_size": a.adapter_size,
            "prompt_tokens": a.prompt_tokens,
        },
        lr=a.lr_scale * LR[method],
        warmup_steps=max(1, a.steps // 10),
        optimizer=optimizer,
    )
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = _trainer(a.steps, callbacks=[timer], check_val_every_n_epoch=10_000)
    trainer.fit(model, dm)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    test = trainer.test(model, dm, verbose=False)[0]
    cost = cost_report(model, optimizer)
    measured = model.cost.get("optimizer_state_bytes_measured", cost["optimizer_state_bytes"])
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    times = timer.times[min(3, len(timer.times) - 1) :]
    ckpt = Path(a.workdir) / f"{method}-{'pre' if init_from else 'rand'}-{draw}.pt"
    torch.save(adapter_state_dict(model) if method != "full" else model.state_dict(), ckpt)
    return {
        "method": method + ("" if init_from else " (random init)"),
        "optimizer": optimizer,
        "test acc": test["test/acc"],
        "test macro-F1": test["test/f1"],
        "trainable %": round(cost["trainable_pct"], 3),
        "trainable params": cost["trainable_params"],
        "optimizer state (B)": int(measured),
        "checkpoint per task (B)": ckpt.stat().st_size,
        "peak memory (B)": int(peak) if peak is not None else int(cost["weight_bytes"] + grads + measured),
        "step ms (median)": round(1000 * statistics.median(times), 2),
        "step ms (min-max)": f"{1000 * min(times):.1f}-{1000 * max(times):.1f}",
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks transfer", description=__doc__)
    cuda = torch.cuda.is_available()
    parser.add_argument("--layers", type=int, default=4 if cuda else 2)
    parser.add_argument("--width", type=int, default=256 if cuda else 64)
    parser.add_argument("--heads", type=int, default=4 if cuda else 2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--nsp", action="store_true", help="add next-sentence prediction to the pretraining")
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--pretrain-ckpt", default=None, help="skip stage 1 and start from this checkpoint")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps per method")
    parser.add_argument("--draws", type=int, default=3, help="labelled subsets drawn; accuracy is their mean")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    parser.add_argument(
        "--png", type=Path, default=None, help="the PNG's path (default: transfer.png in the run folder)"
    )
    parser.add_argument("--train-fraction", type=float, default=0.1)
    parser.add_argument("--lr-scale", type=float, default=1.0, help="multiplies every method's learning rate")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--adapter-size", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workdir", default="runs/bench-transfer")
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything, to prove it runs")
    a = parser.parse_args(argv)
    if a.smoke:
        a.pretrain_steps, a.steps, a.layers, a.width, a.heads, a.vocab, a.draws = 6, 4, 1, 32, 2, 512, 1
    from kit.datamodules.transfer import TopicDataModule
    from kit.nn import GPTConfig

    config = GPTConfig(
        name="tiny", n_layer=a.layers, n_embd=a.width, n_head=a.heads, block_size=a.block, causal=False
    )
    load = os.getloadavg()
    Path(a.workdir).mkdir(parents=True, exist_ok=True)  # also when --pretrain-ckpt skips stage 1
    pre_metrics = {}
    ckpt = a.pretrain_ckpt
    if ckpt is None:
        path, pre_metrics = pretrain(a, config)
        ckpt = str(path)
    # the random start gets the pretrained backbone's exact config (a given --pretrain-ckpt may differ from flags)
    config = GPTConfig(
        **torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["config"]
    )
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    runs: dict[str, list[dict]] = {}
    for draw in range(a.draws):  # each draw: another labelled subset, head init and batch order
        dm = TopicDataModule(
            vocab_size=a.vocab,
            block_size=a.block,
            batch_size=a.batch,
            train_fraction=a.train_fraction,
            seed=a.seed,
            sample_seed=a.seed + draw,
        )
        for m, init in [(m, ckpt) for m in methods] + [("full", None)]:
            progress(f"draw {draw}: fine-tuning {m} from {'the checkpoint' if init else 'a random start'}")
            row = finetune(a, dm, m, init, config, a.seed + draw)
            runs.setdefault(row["method"], []).append(row)
    rows = []
    for rs in runs.values():
        row = dict(rs[0])  # costs and times from the first draw (they do not depend on it)
        for key in ("test acc", "test macro-F1"):
            v = [r[key] for r in rs]
            row[key] = round(statistics.mean(v), 4)
            if len(v) > 1:
                row[f"{key} min-max"] = f"{min(v):.3f}-{max(v):.3f}"
        rows.append(row)
    notes = [
        f"pretraining: MaskedLM{' + NSP' if a.nsp else ''} (masked LM, BERT masking), {a.pretrain_steps} steps of "
        f"batch {a.batch} x {a.block}, lr {a.pretrain_lr} cosine; final {pre_metrics or 'from ' + str(ckpt)}",
        f"task: 6 topics, {len(dm.train_set)} labelled training passages (train_fraction {a.train_fraction}), "
        f"{len(dm.test_set)} test passages with no 13-gram shared with training; {a.steps} steps per method; "
        f"accuracy and macro-F1 are the mean over {a.draws} draw(s) of the labelled subset (min-max beside)",
        f"backbone {config.n_layer}x{config.n_embd}; lr per method {dict((m, a.lr_scale * LR[m]) for m in methods)}; "
        "qlora uses bitsandbytes 8-bit AdamW, the others torch AdamW",
    ]
    by = {r["method"]: r for r in rows}
    if "full" in by and "prompt" in by:
        f, p = by["full"], by["prompt"]
        ratio = {
            k: round(f[k] / max(p[k], 1e-9), 1)
            for k in (
                "trainable params",
                "optimizer state (B)",
                "checkpoint per task (B)",
                "step ms (median)",
            )
        }
        notes.append(
            "the claim 'prompt tuning cuts fine-tuning cost ~100x', per cost (full / prompt, measured here): "
            + ", ".join(f"{k} {v}x" for k, v in ratio.items())
            + ". Parameters, optimizer state and per-task storage shrink by the trainable ratio; step time does "
            "not: the forward and backward still run through the whole (frozen) backbone, and the prompt makes "
            "every sequence longer"
        )
    if not cuda:
        notes.append(
            "CPU run: 'peak memory' is weights + gradients + optimizer state (activations not counted); step times "
            f"depend on the machine's load (1-minute load average {load[0]:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores); benchmarks/gpu_transfer.py measures "
            "GPU peaks and times"
        )
    result = {
        "title": f"Fine-tuning methods on the 6-topic task, {a.train_fraction:.0%} of the labels "
        f"({'smoke' if a.smoke else 'full'} run)",
        "device": device_name(),
        "rows": rows,
        "notes": notes,
    }
    if a.plot:
        png = a.png or out_dir() / "transfer.png"
        _plot(rows, png, result["title"])
        result["plot"] = png.name
    return result


def _plot(rows: list[dict], path: Path, title: str) -> None:
    """Four panels, one bar per method: test macro-F1 (with the draws' range), trainable %, optimizer state and
    checkpoint per task (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"].replace(" (random init)", "\n(random init)") for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("test macro-F1", False),
        ("trainable %", True),
        ("optimizer state (B)", True),
        ("checkpoint per task (B)", True),
    ]
    for ax, (key, log) in zip(axes, panels):
        values = [r[key] for r in rows]
        err = None
        if key == "test macro-F1" and all(f"{key} min-max" in r for r in rows):
            lo_hi = [tuple(map(float, r[f"{key} min-max"].split("-"))) for r in rows]
            err = [
                [v - lo for v, (lo, _) in zip(values, lo_hi)],
                [hi - v for v, (_, hi) in zip(values, lo_hi)],
            ]
        ax.bar(range(len(rows)), values, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(key, fontsize=10)
        if log:
            ax.set_yscale("log")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""GPU smoke checks for precision, clipping and the distributed presets on one CUDA device.

    python benchmarks/gpu_distributed.py --out DIR [--quick]

Checks, each printed as PASS / FAIL / SKIP with its figures, all written to DIR/gpu_distributed.json:

1. ``fsdp-zero3`` preset trains a few steps of the kit's GPT (bf16), saves a sharded checkpoint, resumes from it.
2. ``deepspeed-zero3`` preset does the same (SKIP with the reason if deepspeed is not importable).
3. fp16: ``16-mixed`` + LossScaleMonitor + GradientClipping + fused AdamW trains, clips the unscaled
   gradients (post-clip norm <= max_norm), and the scale stays within its bounds.
4. Precision benchmark: strict fp32 vs fp32+TF32 vs bf16-mixed vs 16-mixed step time and peak memory
   (GPT-2 124M, batch 8 x 512), expecting bf16 faster than TF32 faster than strict fp32.
5. Clipping benchmark: kit GradientClipping + fused AdamW vs Lightning clipping + foreach AdamW.

Needs only torch, lightning (+ its torchmetrics) and this repository; about 2-3 minutes on an H100/H200.
Without CUDA every check is SKIPPED and the script exits 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

import kit.parallel.strategies  # noqa: E402, F401  (registers the presets)
from kit.callbacks.clipping import GradientClipping  # noqa: E402
from kit.callbacks.loss_scale import LossScaleMonitor  # noqa: E402
from kit.models.gpt import CausalLM, GPTConfig  # noqa: E402

SMOKE = GPTConfig.from_name(
    "tiny", vocab_size=512, block_size=128, dropout=0.0, attn_dropout=0.0, embd_dropout=0.0
)


def _data(n: int = 64, block: int = 128, vocab: int = 512) -> torch.utils.data.DataLoader:
    x = torch.randint(0, vocab, (n, block + 1), generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:]), batch_size=8)


ACCELERATOR = "gpu"


def _trainer(strategy: Any, steps: int, root: Path, **kw: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator=ACCELERATOR, devices=1, strategy=strategy, max_steps=steps, default_root_dir=str(root),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw,
    )  # fmt: skip


def check_sharded(strategy: str, precision: str, root: Path) -> dict:
    """Train 4 steps, save a (sharded) checkpoint, resume for 2 more steps from it."""
    model = CausalLM(SMOKE, lr=1e-3, warmup_steps=1, max_steps=6)
    t1 = _trainer(strategy, 4, root, precision=precision)
    t1.fit(model, _data())
    loss1 = float(t1.callback_metrics.get("train/loss", t1.callback_metrics.get("train_loss", float("nan"))))
    ckpt = root / f"{strategy}.ckpt"
    t1.save_checkpoint(ckpt)
    sharded = ckpt.is_dir()
    files = sorted(p.name for p in ckpt.iterdir()) if sharded else [ckpt.name]
    del t1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    model2 = CausalLM(SMOKE, lr=1e-3, warmup_steps=1, max_steps=6)
    t2 = _trainer(strategy, 6, root, precision=precision)
    t2.fit(model2, _data(), ckpt_path=str(ckpt))
    ok = sharded and t2.global_step == 6
    return {
        "status": "PASS" if ok else "FAIL",
        "sharded_checkpoint": sharded,
        "files": files[:8],
        "resumed_to_step": t2.global_step,
        "loss_after_4": loss1,
        "strategy_class": type(t2.strategy).__name__,
    }


class _ScaledNormProbe(pl.Callback):
    """Records the gradient norm and loss scale Lightning hands to ``on_before_optimizer_step``."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads))
        self.seen.append((norm, float(trainer.precision_plugin.scaler.get_scale())))


def check_fp16_clipping(root: Path) -> dict:
    """fp16 + bounded loss scale + kit clipping + fused AdamW on the GPU: clips the unscaled gradients."""
    probe = _ScaledNormProbe()  # runs before GradientClipping: sees the still-scaled fused-optimizer grads
    clip = GradientClipping(max_norm=0.5)
    scale = LossScaleMonitor(init_scale=1024, min_scale=8, max_scale=1024, growth_interval=2)
    model = CausalLM(SMOKE, lr=1e-3, warmup_steps=1, max_steps=8, fused=True)
    trainer = _trainer(
        "auto", 8, root, plugins=[scale.precision_plugin("cuda")], callbacks=[scale, probe, clip]
    )
    trainer.fit(model, _data())
    opt = trainer.optimizers[0]
    post = float(clip.last["grad_norm/post_clip"])
    pre = float(clip.last["grad_norm/pre_clip"])
    scaled_norm, loss_scale = probe.seen[-1]
    expected = scaled_norm / loss_scale  # what the norm is once unscaled exactly once
    cur = trainer.precision_plugin.scaler.get_scale()
    fused = bool(opt.defaults.get("fused"))
    unscaled_once = abs(pre - expected) <= 1e-2 * max(expected, 1e-8)
    ok = fused and unscaled_once and post <= 0.5 * 1.001 and 8 <= cur <= 1024
    return {
        "status": "PASS" if ok else "FAIL",
        "fused_adamw": fused,
        "pre_clip_norm": pre,
        "scaled_norm_over_scale": expected,
        "post_clip_norm": post,
        "loss_scale": cur,
        "skipped_steps": scale.tracker.total_skips,
    }


def run_check(name: str, fn: Any, results: dict) -> None:
    start = time.perf_counter()
    try:
        res = fn()
    except Exception as err:  # a smoke script reports every failure and goes on
        res = {
            "status": "FAIL",
            "error": f"{type(err).__name__}: {err}",
            "trace": traceback.format_exc()[-2000:],
        }
    res["seconds"] = round(time.perf_counter() - start, 1)
    results[name] = res
    figures = {k: v for k, v in res.items() if k not in ("status", "trace", "rows")}
    print(f"{res['status']}: {name} {json.dumps(figures, default=str)}", flush=True)
    for row in res.get("rows", []):
        print(f"    {row}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="skip the two timing benchmarks")
    a = parser.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    if not torch.cuda.is_available():
        for name in ("fsdp_zero3", "deepspeed_zero3", "fp16_clipping", "precision", "clipping"):
            results[name] = {"status": "SKIP", "reason": "CUDA is not available"}
            print(f"SKIP: {name} (CUDA is not available)")
        (a.out / "gpu_distributed.json").write_text(json.dumps(results, indent=2))
        return 0
    device = torch.cuda.get_device_name()
    print(f"device: {device}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="kit-gpu-"))
    try:
        run_check("fsdp_zero3", lambda: check_sharded("fsdp-zero3", "bf16-mixed", tmp / "fsdp"), results)
        try:
            import deepspeed  # noqa: F401

            run_check(
                "deepspeed_zero3", lambda: check_sharded("deepspeed-zero3", "bf16-mixed", tmp / "ds"), results
            )
        except ImportError as err:
            results["deepspeed_zero3"] = {"status": "SKIP", "reason": f"deepspeed is not importable ({err})"}
            print(f"SKIP: deepspeed_zero3 (deepspeed is not importable: {err})", flush=True)
        run_check("fp16_clipping", lambda: check_fp16_clipping(tmp / "fp16"), results)
        if not a.quick:
            from benchmarks import clipping, precision

            def _precision() -> dict:
                r = precision.main([])
                by = {row["precision"]: row["ms/step"] for row in r["rows"]}
                ok = by["bf16-mixed"] < by["fp32 + TF32"] < by["fp32 strict"]
                return {"status": "PASS" if ok else "FAIL", "ordering": "bf16 < TF32 < strict fp32", **r}

            def _clipping() -> dict:
                r = clipping.main([])
                return {"status": "PASS", **r}

            run_check("precision", _precision, results)
            run_check("clipping", _clipping, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["device"] = {"status": "INFO", "name": device}
    (a.out / "gpu_distributed.json").write_text(json.dumps(results, indent=2, default=str))
    failed = [k for k, v in results.items() if v.get("status") == "FAIL"]
    print(
        f"{'FAIL' if failed else 'PASS'}: {len(failed)} failed {failed}; wrote {a.out / 'gpu_distributed.json'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU checks for the data side: MixUp/CutMix on device.

Run: ``python benchmarks/gpu_data.py --out DIR`` (needs only torch, lightning, numpy and the kit).

Checks, each printed as PASS/FAIL:
1. ``mixup_batch`` / ``cutmix_batch`` on CUDA equal the CPU results for the same draws.
2. ``MixUpTransform`` makes no host-device synchronisation (``torch.cuda.set_sync_debug_mode("error")``).
3. ``MixUpCutMix`` in a Lightning ``Trainer`` on the GPU trains ``ImageClassifier`` on soft targets
   (scikit-learn digits if installed, else a synthetic 10-class image set) and beats chance.
4. Figure: the transform's cost per batch (B=256, 3x224x224) against a small conv step on the same batch.
Without CUDA the device checks are reported as SKIP and the CPU parts still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kit.callbacks.mixup import MixUpCutMix
from kit.data.augment_image import MixUpTransform, cutmix_batch, mixup_batch


def check_equal(device: str) -> bool:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    perm = torch.randperm(16, generator=g)
    ok = True
    for fn, kw in ((mixup_batch, {"lam": 0.3}), (cutmix_batch, {"box": (4, 20, 8, 30)})):
        xc, tc, lc, _ = fn(x, y, num_classes=10, perm=perm, **kw)
        xd, td, ld, _ = fn(x.to(device), y.to(device), num_classes=10, perm=perm, **kw)
        ok &= torch.allclose(xc, xd.cpu(), atol=1e-5) and torch.allclose(tc, td.cpu(), atol=1e-6) and lc == ld
    return bool(ok)


def check_no_sync(device: str) -> bool:
    t = MixUpTransform(num_classes=10)
    x, y = torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            t(x, y)
        return True
    except RuntimeError as err:
        print(f"  sync detected: {err}")
        return False
    finally:
        torch.cuda.set_sync_debug_mode(0)


def check_training(device: str) -> tuple[bool, float]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from kit.models.classifier import ImageClassifier

    try:
        from kit.datamodules.digits import DigitsDataModule

        dm = DigitsDataModule(batch_size=64)
        dm.setup("fit")
        train, val = dm.train_set, dm.val_set
    except ImportError:
        g = torch.Generator().manual_seed(0)
        protos = torch.randn(10, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (2000,), generator=g)
        x = protos[y] + 0.5 * torch.randn(2000, 1, 8, 8, generator=g)
        train, val = TensorDataset(x[:1600], y[:1600]), TensorDataset(x[1600:], y[1600:])
    model = ImageClassifier(num_classes=10)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[MixUpCutMix.from_preset("deit", num_classes=10)],
    )
    trainer.fit(
        model, DataLoader(train, batch_size=64, shuffle=True, drop_last=True), DataLoader(val, batch_size=256)
    )
    acc = float(trainer.callback_metrics["val/acc"])
    return acc > 0.5, acc


def timing(device: str) -> dict[str, float]:
    x, y = torch.randn(256, 3, 224, 224, device=device), torch.randint(0, 1000, (256,), device=device)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 7, stride=4),
        torch.nn.GELU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 1000),
    ).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    t = MixUpTransform(num_classes=1000)

    def step(xb, tb):
        loss = torch.nn.functional.cross_entropy(net(xb), tb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(fn, n=30):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - start) / n

    hard = torch.nn.functional.one_hot(y, 1000).float()
    step_ms = timed(lambda: step(x, hard))
    mix_ms = timed(lambda: t(x, y))
    return {
        "transform_ms": round(mix_ms, 3),
        "small_step_ms": round(step_ms, 3),
        "transform_share_pct": round(100 * mix_ms / (mix_ms + step_ms), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the checks; returns a harness-style dict (``python -m benchmarks gpu_data`` works too)."""
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_data.py")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_data.json (none: no file)")
    args = parser.parse_args(argv)
    results: dict[str, object] = {"cuda": torch.cuda.is_available()}
    results["cpu_equal_self"] = check_equal("cpu")
    print(f"{'PASS' if results['cpu_equal_self'] else 'FAIL'} cpu: functions deterministic for pinned draws")
    if not torch.cuda.is_available():
        print("SKIP no CUDA: device checks not run")
    else:
        results["device"] = torch.cuda.get_device_name(0)
        checks = [
            ("cuda_matches_cpu", lambda: check_equal("cuda")),
            ("no_host_sync", lambda: check_no_sync("cuda")),
        ]
        for name, fn in checks:
            results[name] = fn()
            print(f"{'PASS' if results[name] else 'FAIL'} {name}")
        ok, acc = check_training("cuda")
        results["train_soft_targets"], results["val_acc"] = ok, acc
        print(f"{'PASS' if ok else 'FAIL'} Trainer + MixUpCutMix on GPU: val acc {acc:.3f} (chance 0.1)")
        results["timing"] = timing("cuda")
        print(f"figure: {results['timing']}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_data.json").write_text(json.dumps(results, indent=2) + "\n")
    failed = [k for k, v in results.items() if v is False and k != "cuda"]
    print("ALL PASS" if not failed else f"FAILED: {failed}")
    rows = [{"check": k, "result": v} for k, v in results.items() if k not in ("timing", "device")]
    rows += [{"check": f"timing {k}", "result": v} for k, v in dict(results.get("timing", {})).items()]
    return {
        "title": "GPU checks: MixUp/CutMix on device",
        "device": str(results.get("device", "no CUDA")),
        "rows": rows,
        "notes": [f"failed: {failed}" if failed else "all checks passed"],
        "failed": failed,
    }


if __name__ == "__main__":
    raise SystemExit(1 if main(sys.argv[1:])["failed"] else 0)

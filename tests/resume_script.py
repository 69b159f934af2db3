"""A tiny training run for the resume tests (run as a subprocess, so it can be killed).

python tests/resume_script.py OUT --data plain|temperature|webdataset [--resume] [--max-steps N]

Every training step appends ``{"step", "ids"}`` to ``OUT/record.jsonl`` (flushed), so the parent sees the
progress and the batch sequence; the final weights go to ``OUT/final.pt``. The model has dropout, so an
inexact RNG restore changes the weights; validation every 5 steps draws from the global RNG in between.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import Dataset

from kit.callbacks.checkpoint import KitCheckpoint
from kit.checkpoint import newest_good

N = 96


class Items(Dataset):
    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(int(i))
        x = torch.randn(8, generator=g)
        return torch.tensor(i), x, x.sum(0, keepdim=True)


def decode_sample(sample: dict) -> tuple:
    i = int(sample["__key__"].split("_")[-1])
    return Items()[i]


class Net(pl.LightningModule):
    def __init__(self, record: str) -> None:
        super().__init__()
        self.record = record
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        ids, x, y = batch
        with open(self.record, "a") as f:
            f.write(json.dumps({"step": self.global_step, "ids": ids.tolist()}) + "\n")
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        _, x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.01)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 7, 0.5)]


class Data(pl.LightningDataModule):
    def __init__(self, kind: str, shards: str | None) -> None:
        super().__init__()
        self.kind, self.shards = kind, shards

    def train_dataloader(self):
        from torchdata.stateful_dataloader import StatefulDataLoader

        if self.kind == "plain":
            from torchdata.stateful_dataloader.sampler import RandomSampler

            # the sampler owns its generator: the loader's would also feed each iterator's base seed
            sampler = RandomSampler(Items(), generator=torch.Generator().manual_seed(0))
            return StatefulDataLoader(Items(), batch_size=8, sampler=sampler)
        if self.kind == "temperature":
            from kit.data.sampling import TemperatureSampler

            groups = [0] * 70 + [1] * 20 + [2] * 6
            return StatefulDataLoader(Items(), batch_size=8, sampler=TemperatureSampler(groups, 3.0, seed=0))
        raise ValueError(self.kind)

    def val_dataloader(self):
        from torch.utils.data import DataLoader, Subset

        return DataLoader(Subset(Items(), range(16)), batch_size=8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--data", default="plain")
    p.add_argument("--shards", default=None)
    p.add_argument(
        "--epoch-length", type=int, default=12, help="webdataset: batches per epoch; 0: unsized stream"
    )
    p.add_argument("--workers", type=int, default=0, help="webdataset: DataLoader workers")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument(
        "--hang-at", type=int, default=None, help="block forever at this step (a dead peer's effect)"
    )
    p.add_argument("--hang-timeout", type=float, default=None)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(7, verbose=False)
    torch.use_deterministic_algorithms(True)
    model = Net(str(out / "record.jsonl"))
    if args.data == "webdataset":
        from kit.datamodules.webdataset import WebDataModule

        data = WebDataModule(
            args.shards,
            batch_size=8,
            shuffle_buffer=16,
            decode=decode_sample,
            seed=3,
            epoch_length=args.epoch_length or None,
            num_workers=args.workers,
        )
    else:
        data = Data(args.data, args.shards)
    ckpt = KitCheckpoint(
        dirpath=str(out / "ckpt"),
        every_n_train_steps=args.every,
        keep_last=2,
        hang_timeout_s=args.hang_timeout,
    )
    callbacks: list[pl.Callback] = [ckpt]
    if args.hang_at is not None:
        import threading

        class Hang(pl.Callback):
            def on_train_batch_start(self, trainer, *a):
                if trainer.global_step == args.hang_at:
                    threading.Event().wait()  # like a collective whose peer is gone

        callbacks.append(Hang())
    if args.step_sleep:
        import time

        class Slow(pl.Callback):
            def on_train_batch_end(self, *a):
                time.sleep(args.step_sleep)

        callbacks.append(Slow())
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    path = newest_good(out / "ckpt") if args.resume else None
    trainer.fit(model, datamodule=data, ckpt_path=str(path) if path else None)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final.pt")
    print(
        json.dumps(
            {
                "resumed_from": str(path) if path else None,
                "step": trainer.global_step,
                "preempted": ckpt.preempted_by,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    raise SystemExit(main())

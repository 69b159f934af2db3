"""A callback the CLI resume tests add to a recipe (``PYTHONPATH=tests``): it appends every training step's
batch fingerprint to a JSON Lines file, flushed, so the parent process sees progress and the batch sequence,
and can slow each step down so a signal lands mid-run."""

from __future__ import annotations

import hashlib
import json
import time

import lightning.pytorch as pl
import torch


def fingerprint(batch) -> str:
    """SHA-1 of every tensor in a batch (bytes and shape), in order."""
    h = hashlib.sha1()
    tensors = batch if isinstance(batch, (list, tuple)) else [batch]
    for t in tensors:
        if isinstance(t, torch.Tensor):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class BatchLog(pl.Callback):
    """Append ``{"step", "epoch", "batch"}`` per training step to ``path``; sleep ``step_sleep`` s after each."""

    def __init__(self, path: str, step_sleep: float = 0.0) -> None:
        self.path, self.step_sleep = path, step_sleep

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch": fingerprint(batch)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step_sleep:
            time.sleep(self.step_sleep)

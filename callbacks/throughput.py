"""``TokenThroughput``: Lightning's ``ThroughputMonitor`` with defaults for ``(input_ids, targets)`` batches.

Where Lightning's own peak-FLOPs table has no entry for the device (H200, B200 and other names it does
not parse), the peak comes from the kit's table (``kit.health.flops.GPUS``, the planner's), so MFU is
logged there too.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from kit.health.flops import peak_flops_for

__all__ = ["TokenThroughput", "batch_size_of", "tokens_per_sample"]


def batch_size_of(batch: Any) -> int:
    """Leading dimension of the first tensor in a batch (tuple, list, dict or tensor)."""
    first = _first_tensor(batch)
    return int(first.size(0))


def tokens_per_sample(batch: Any) -> int:
    """Tokens in a batch: B * T of the first tensor (T = 1 for 1-D tensors)."""
    first = _first_tensor(batch)
    return int(first.numel())


def _first_tensor(batch: Any):
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    while isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not hasattr(batch, "size"):
        raise TypeError(f"cannot find a tensor in a batch of type {type(batch).__name__}; pass batch_size_fn")
    return batch


class TokenThroughput(ThroughputMonitor):
    """Logs samples/s, tokens/s and, where the device's peak FLOP/s is known and the module sets
    ``flops_per_batch``, model FLOPs utilisation (MFU). Usable from YAML with no arguments.

    The peak is Lightning's for the run's compute dtype; for a CUDA device Lightning does not know, it is
    the kit's dense bf16 peak (``kit.health.flops.peak_flops_for``).

    Args:
        window_size: batches averaged per reading.
        separator: between the stage and the metric name in logged keys.

    Example:
        >>> trainer = pl.Trainer(callbacks=[TokenThroughput()])  # doctest: +SKIP
    """

    def __init__(self, window_size: int = 20, separator: str = "/") -> None:
        super().__init__(
            batch_size_fn=batch_size_of,
            length_fn=tokens_per_sample,
            window_size=window_size,
            separator=separator,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning warns "FLOPs not found" for devices its table lacks; hold that back until the kit's
        # table has had its turn, so the warning only appears when MFU really cannot be logged.
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always")
            super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        if self.available_flops is None and device.type == "cuda":
            peak = peak_flops_for(torch.cuda.get_device_name(device))
            if peak is not None:
                self.available_flops = int(peak)
                for throughput in self._throughputs.values():
                    throughput.available_flops = self.available_flops
        for w in held:
            if self.available_flops is None or "FLOPs not found" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

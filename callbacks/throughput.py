"""``TokenThroughput``: Lightning's ``ThroughputMonitor`` with defaults for ``(input_ids, targets)`` batches."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor

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

"""What a resumed fit needs beyond Lightning's own restore: a clear error for a model that does not fit the
checkpoint, and a fresh epoch after one that ``limit_train_batches`` cut short.

Example:
    >>> handle = module.register_load_state_dict_pre_hook(mismatch_hook)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from kit._compat import train_data_fetcher
from kit.checkpoint import describe_mismatch

__all__ = ["mismatch_hook", "start_cut_short_epoch_afresh"]


def start_cut_short_epoch_afresh(trainer: pl.Trainer) -> None:
    """Resumed from the last step of an epoch that ``limit_train_batches`` cut short: begin the next epoch anew.

    The restored loader state is mid-way through that epoch's order (the loader was never exhausted), and
    Lightning creates the resumed run's first iterator from it, so the next epoch would continue the old order.
    The uninterrupted run instead starts a new iterator at the epoch boundary (a new permutation from the
    sampler's generator, which restoring the old one has advanced); so does this, once, before the first batch.
    A stream (an iterable dataset) keeps its own position: one with ``start_next_epoch()`` (the kit's webdataset
    stream) is told to drop it, when it lives in this process (no workers); any other gets a warning.
    """
    from lightning.pytorch.utilities.data import sized_len
    from torch.utils.data import IterableDataset

    loop = trainer.fit_loop
    fetcher = train_data_fetcher(trainer)
    progress = loop.epoch_loop.batch_progress.current
    batches = trainer.num_training_batches
    if trainer.ckpt_path is None or fetcher is None or not progress.ready or progress.ready < batches:
        return
    if not loop.epoch_loop.restarted_on_train_batch_end:
        return  # saved after the epoch's validation: Lightning itself starts the next epoch with a new iterator
    loader = trainer.train_dataloader
    length = sized_len(loader) if loader is not None else None
    if length is not None and length <= batches:
        return  # the epoch ended with the loader: its restored state already starts a new one
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, IterableDataset):
        # a stream holds its own position; one that can drop it (the kit's webdataset stream) starts anew, in
        # this process only: worker processes hold their own copies
        start = getattr(dataset, "start_next_epoch", None)
        if start is None or getattr(loader, "num_workers", 0) > 0:
            rank_zero_warn(
                "KitCheckpoint: resumed at the end of an epoch that limit_train_batches cut short; the stream "
                "continues where that epoch stopped instead of starting the next epoch's order (the "
                "uninterrupted run's)"
            )
            return
        start()
    iter(fetcher)


def mismatch_hook(
    module: torch.nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing: list[str],
    unexpected: list[str],
    errors: list[str],
) -> None:
    """Before a resume loads the weights: a clear error listing the keys and shapes that differ."""
    if prefix or not strict:
        return
    problem = describe_mismatch(module.state_dict(), {k: v for k, v in state_dict.items()})
    if problem:
        raise ValueError(
            f"{problem}. The checkpoint was written by a model with a different config; resume with the same "
            "model settings, or load only the weights that fit (strict_loading=False)"
        )

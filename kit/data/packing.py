"""Token packing into fixed-length blocks and document-level train/val splits."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

__all__ = ["pack_blocks", "split_documents"]


def split_documents(names: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split documents (not tokens) into train and validation sets, reproducibly.

    Splitting by document means no block can straddle the split. At least one document lands on each side.

    Args:
        names: document identifiers.
        val_fraction: share of documents for validation, in (0, 1).
        seed: shuffle seed.

    Returns:
        ``(train_names, val_names)`` each in their original relative order.

    Raises:
        ValueError: fewer than two documents, or ``val_fraction`` outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1); 0.1 is a common choice")
    if len(names) < 2:
        raise ValueError(
            f"a document-level split needs at least 2 documents, got {len(names)}; add files or split a large one"
        )
    order = list(range(len(names)))
    random.Random(seed).shuffle(order)
    n_val = min(len(names) - 1, max(1, round(len(names) * val_fraction)))
    val_idx = set(order[:n_val])
    train = [n for i, n in enumerate(names) if i not in val_idx]
    val = [n for i, n in enumerate(names) if i in val_idx]
    return train, val


def pack_blocks(
    token_lists: Sequence[Sequence[int]], block_size: int, eos_id: int | None = None
) -> torch.Tensor:
    """Concatenate documents (each followed by ``eos_id``) and cut the stream into rows of ``block_size + 1``.

    Consecutive rows overlap by one token so that row ``i`` yields inputs ``row[:-1]`` and targets ``row[1:]``
    and every token of the stream (but the very first) is a target exactly once. The ragged tail that does not
    fill a row is dropped.

    Args:
        token_lists: token ids per document.
        block_size: context length T.
        eos_id: separator appended after each document; None appends nothing.

    Returns:
        LongTensor of shape (N, block_size + 1).

    Raises:
        ValueError: the stream is shorter than one block; the message gives both sizes.
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        if eos_id is not None:
            stream.append(eos_id)
    n_rows = (len(stream) - 1) // block_size
    if n_rows < 1:
        raise ValueError(
            f"block_size={block_size} exceeds the corpus ({len(stream):,} tokens); lower data.block_size "
            f"to at most {max(1, len(stream) - 1)} or add text"
        )
    data = torch.tensor(stream[: n_rows * block_size + 1], dtype=torch.long)
    # (N, T+1) view with overlap 1: row i covers stream[i*T : (i+1)*T + 1]
    return data.unfold(0, block_size + 1, block_size).contiguous()

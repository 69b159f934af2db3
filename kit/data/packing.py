"""Token packing into fixed-length blocks and document-level train/val splits."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence

import torch

__all__ = ["iter_blocks", "pack_blocks", "split_documents"]


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


def iter_blocks(
    token_lists: Iterable[Sequence[int]], block_size: int, eos_id: int | None = None
) -> Iterator[list[int]]:
    """Stream the rows of :func:`pack_blocks` one at a time, in constant memory (the kit's one packer).

    Documents (each followed by ``eos_id``) are concatenated and cut into rows of ``block_size + 1``
    tokens; row ``i`` covers ``stream[i*T : (i+1)*T + 1]``, so consecutive rows overlap by one token and
    every token but the first is a target exactly once. The ragged tail that does not fill a row is dropped.

    Args:
        token_lists: token ids per document (any iterable, consumed once).
        block_size: context length T.
        eos_id: separator appended after each document; None appends nothing.

    Yields:
        Lists of ``block_size + 1`` token ids.

    Raises:
        ValueError: ``block_size < 1`` (on the first ``next``).

    Example:
        >>> list(iter_blocks([[1, 2, 3], [4, 5]], 2, eos_id=0))
        [[1, 2, 3], [3, 0, 4], [4, 5, 0]]
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    row = block_size + 1
    buffer: list[int] = []
    for ids in token_lists:
        buffer.extend(ids)
        if eos_id is not None:
            buffer.append(eos_id)
        start = 0
        while len(buffer) - start >= row:
            yield buffer[start : start + row]
            start += block_size
        del buffer[:start]  # keep the overlap token and the unfinished row only


def pack_blocks(
    token_lists: Sequence[Sequence[int]], block_size: int, eos_id: int | None = None
) -> torch.Tensor:
    """Concatenate documents (each followed by ``eos_id``) and cut the stream into rows of ``block_size + 1``.

    Consecutive rows overlap by one token so that row ``i`` yields inputs ``row[:-1]`` and targets ``row[1:]``
    and every token of the stream (but the very first) is a target exactly once. The ragged tail that does not
    fill a row is dropped. The rows are those of :func:`iter_blocks` (``kit data shards`` streams them).

    Args:
        token_lists: token ids per document.
        block_size: context length T.
        eos_id: separator appended after each document; None appends nothing.

    Returns:
        LongTensor of shape (N, block_size + 1).

    Raises:
        ValueError: the stream is shorter than one block; the message gives both sizes.
    """
    rows = list(iter_blocks(token_lists, block_size, eos_id))
    if not rows:
        n_tokens = sum(len(ids) for ids in token_lists) + (len(token_lists) if eos_id is not None else 0)
        raise ValueError(
            f"block_size={block_size} exceeds the corpus ({n_tokens:,} tokens); lower data.block_size "
            f"to at most {max(1, n_tokens - 1)} or add text"
        )
    return torch.tensor(rows, dtype=torch.long)

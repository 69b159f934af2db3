"""BERT pretraining inputs: masked-token corruption and next-sentence pairs (Devlin et al. 2019, section 3.1).

Both are plain functions with their randomness passed in (a ``torch.Generator`` or a ``random.Random``), so a
test can pin every draw; ``kit.datamodules.transfer`` calls them in its collation.

Example:
    >>> ids = torch.tensor([[1, 5, 6, 7, 2]])
    >>> inputs, labels = bert_mask(ids, mask_id=3, vocab_size=10, special_ids=[1, 2],
    ...                            generator=torch.Generator().manual_seed(0), p=1.0)
    >>> labels.tolist()  # every non-special position is a target; specials are never masked
    [[-100, 5, 6, 7, -100]]
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

__all__ = ["IGNORE_INDEX", "bert_mask", "nsp_pair"]

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: positions that are not prediction targets


def bert_mask(
    ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    generator: torch.Generator | None = None,
    p: float = 0.15,
    p_mask: float = 0.8,
    p_random: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``p`` of the non-special tokens as targets; of those 80% become ``mask_id``, 10% a random token,
    10% stay as they are.

    Args:
        ids: token ids, any shape (usually (B, T)).
        mask_id: the ``[MASK]`` token.
        vocab_size: random replacements are drawn from the non-special ids below this.
        special_ids: tokens never chosen ([CLS], [SEP], [PAD], ...).
        generator: the source of every draw; None uses torch's global RNG.
        p: share of eligible tokens that become targets.
        p_mask: share of targets replaced by ``mask_id``.
        p_random: share of targets replaced by a random token (the rest are kept).

    Returns:
        ``(inputs, labels)``: the corrupted ids, and the original id at target positions and ``IGNORE_INDEX``
        elsewhere.

    Raises:
        ValueError: probabilities outside [0, 1] or ``p_mask + p_random > 1``.
    """
    if not 0.0 <= p <= 1.0 or p_mask < 0 or p_random < 0 or p_mask + p_random > 1.0:
        raise ValueError(
            f"need 0 <= p <= 1 and p_mask + p_random <= 1; got p={p}, p_mask={p_mask}, p_random={p_random}"
        )
    special = torch.isin(ids, torch.as_tensor(list(special_ids), dtype=ids.dtype, device=ids.device))
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    target = (draw < p) & ~special
    labels = torch.where(target, ids, torch.full_like(ids, IGNORE_INDEX))
    kind = torch.rand(ids.shape, generator=generator, device=ids.device)
    to_mask = target & (kind < p_mask)
    to_random = target & (kind >= p_mask) & (kind < p_mask + p_random)
    # random replacements are ordinary tokens: draw over the non-special ids
    ordinary = torch.arange(vocab_size, device=ids.device)
    ordinary = ordinary[~torch.isin(ordinary, torch.tensor([*special_ids, mask_id], device=ids.device))]
    pick = torch.randint(0, ordinary.numel(), ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    inputs = torch.where(to_random, ordinary[pick].to(ids.dtype), inputs)
    return inputs, labels


def nsp_pair(
    segments: Sequence[Sequence[Sequence[int]]], doc: int, index: int, rng: random.Random
) -> tuple[list[int], list[int], int]:
    """Segment ``index`` of document ``doc`` and, half the time, the segment after it (label 1); otherwise a
    random segment of another document (label 0).

    Args:
        segments: per document, its segments in order (token id lists).
        doc: document of the first segment.
        index: position of the first segment; the last segment of a document always gets a random partner.
        rng: the coin and the random draw.

    Returns:
        ``(segment_a, segment_b, is_next)``.

    Raises:
        ValueError: fewer than two documents (no "other document" to draw from).
    """
    if len(segments) < 2:
        raise ValueError(f"next-sentence pairs need >= 2 documents, got {len(segments)}")
    a = list(segments[doc][index])
    if rng.random() < 0.5 and index + 1 < len(segments[doc]):
        return a, list(segments[doc][index + 1]), 1
    other = rng.randrange(len(segments) - 1)
    other += other >= doc  # any document but this one
    return a, list(rng.choice(segments[other])), 0

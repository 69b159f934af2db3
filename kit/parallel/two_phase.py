"""The two-phase compressed all-reduce of 1-bit Adam (Tang et al. 2021), whose bytes per worker do not grow with W.

Gathering every worker's compressed message (``all_gather``) makes each worker receive ``W - 1`` messages,
so the cut against a dense ring all-reduce shrinks as ``W`` grows and turns negative beyond ``W = 64`` for
1-bit. The two-phase scheme keeps it constant:

1. each worker adds its worker-side error to its vector, cuts it into ``W`` chunks and compresses each
   chunk (the new worker error is what compression lost);
2. ``all_to_all``: chunk ``j`` goes to worker ``j``, which now holds ``W`` compressed versions of its chunk;
3. worker ``j`` decodes and averages them, adds its server-side error, compresses the average again (the
   new server error is what that lost);
4. ``all_gather``: every worker receives every compressed averaged chunk and decodes the full vector.

Each phase moves ``(W - 1)`` chunk messages per worker, so one worker sends
``2 (W - 1) x message(n / W)``: ``2 (W-1)/W x n/8`` bytes plus scales for 1-bit, the same ``2 (W-1)/W``
factor as a dense ring all-reduce (``x 4n``), hence a ~97% cut at any ``W``. All workers decode the same
gathered messages, so they end with bit-identical results.

A codec turns rows of a ``(R, c)`` float32 matrix into rows of a ``(R, P)`` uint8 matrix of fixed width
``P`` (``all_to_all_single`` needs equal splits): :class:`SignCodec` (1 bit per entry plus one fp32 scale
``mean |x|`` per scale group: the whole chunk, or, with ``segments``, each tensor's piece of the chunk,
optionally cut into ``block`` entries; see :func:`scale_groups`) and :class:`TopKCodec` (the ``ratio``
largest entries of each chunk as fp32 values and int32 indices).

Scales must not span tensors of different gradient scale: one ``mean |x|`` per chunk of a DDP bucket made
``ddp-1bit`` end 32.5% above dense with momentum SGD; one per 32 entries of a tensor, +0.6% (docs/benchmarks.md).

Example:
    >>> codec, ef = SignCodec(block=2), ErrorFeedback()
    >>> out = compressed_allreduce(torch.tensor([1.0, -3.0, 0.5, 0.5]), codec, ef, segments=[2, 2])  # W = 1
    >>> out.shape
    torch.Size([4])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from kit.parallel.compression import (
    CHUNK_MULTIPLE,
    chunk_size,
    group_count,
    sign_bytes,
    topk_bytes,
    topk_count,
)

__all__ = [
    "Codec",
    "ErrorFeedback",
    "SignCodec",
    "TopKCodec",
    "chunk_size",
    "compressed_allreduce",
    "group_count",
    "make_codec",
    "scale_groups",
]

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


class Codec(Protocol):
    """Row-wise compressor with fixed-size messages: ``encode`` -> ``(payload, residual)``, ``decode``.

    ``ids``/``groups`` (from :func:`scale_groups`) say which scale each entry uses; codecs without scales
    ignore them.
    """

    multiple: int
    block: int | None

    def message_bytes(self, chunk: int, groups: int = 1) -> int: ...

    def encode(self, rows: Tensor, ids: Tensor | None = None, groups: int = 1) -> tuple[Tensor, Tensor]: ...

    def decode(self, payload: Tensor, chunk: int, ids: Tensor | None = None) -> Tensor: ...


def scale_groups(
    numel: int, world: int, chunk: int, segments: list[int] | None = None, block: int | None = None
) -> tuple[Tensor, int]:
    """Which scale every entry of the padded ``(world, chunk)`` matrix uses: ``(ids (world, chunk), groups)``.

    A group is a run of consecutive entries of one chunk row that belong to the same segment (one
    parameter tensor of the vector; ``segments=None`` is one segment of ``numel``) and, with ``block``,
    to the same ``block``-sized piece of that segment. The padding after ``numel`` is a group of its own
    (all zeros, so its scale stays 0). ``ids`` numbers the groups of each row from 0; ``groups`` is the
    most any row has, the scales every message carries (``all_to_all_single`` needs equal sizes).

    A scale never spans two tensors: one ``mean |x|`` over tensors whose gradients differ 100x (a bias
    next to a LayerNorm weight) throttles the large ones, whose error-feedback residuals then grow stale,
    and drowns the small ones in noise.

    Raises:
        ValueError: if ``segments`` do not sum to ``numel``.

    Example:
        >>> ids, groups = scale_groups(6, 2, 4, segments=[3, 3])
        >>> ids.tolist(), groups
        ([[0, 0, 0, 1], [0, 0, 1, 1]], 2)
    """
    total = world * chunk
    sizes = [numel] if segments is None else [int(s) for s in segments]
    if sum(sizes) != numel:
        raise ValueError(
            f"segments sum to {sum(sizes)} but the vector has {numel} entries; pass its tensors' sizes in order"
        )
    if total > numel:
        sizes.append(total - numel)  # the padding
    sizes_t = torch.tensor(sizes)
    seg = torch.repeat_interleave(torch.arange(len(sizes)), sizes_t)
    new = torch.ones(total, dtype=torch.bool)
    new[1:] = seg[1:] != seg[:-1]
    if block is not None:
        starts = torch.repeat_interleave(torch.cumsum(sizes_t, 0) - sizes_t, sizes_t)
        new |= (torch.arange(total) - starts) % block == 0
    new.view(world, chunk)[:, 0] = True
    ids = new.view(world, chunk).cumsum(1) - 1
    return ids, int(ids[:, -1].max()) + 1


@dataclass
class SignCodec:
    """1 bit per entry (sign) plus one fp32 scale ``mean |x|`` per scale group: ``c/8 + 4 x groups`` bytes per row.

    The groups (see :func:`scale_groups`) are the pieces of each parameter tensor that fall in a chunk
    (``compressed_allreduce(..., segments=sizes)``), or the whole chunk without segments (1-bit Adam's
    and DeepSpeed's single scale); ``block`` further splits each tensor piece into ``block``-sized groups.
    ``scale="mean"`` (default): ``mean |x|``, the scale that minimises ``||x - s sign(x)||``.
    ``scale="l2"``: ``||x||_2 / sqrt(n)``, DeepSpeed's (its former ``OnebitAdam``), which keeps the decoded
    message's norm equal to the input's and overshoots ``mean |x|`` whenever the magnitudes are uneven.

    Raises:
        ValueError: for another ``scale``.
    """

    block: int | None = None
    scale: str = "mean"
    multiple: int = CHUNK_MULTIPLE  # chunk sizes are whole sign bytes

    def __post_init__(self) -> None:
        if self.scale not in ("mean", "l2"):
            raise ValueError(
                f"scale={self.scale!r} is not supported; choose 'mean' (mean |x|) or 'l2' (DeepSpeed's)"
            )

    def message_bytes(self, chunk: int, groups: int = 1) -> int:
        return sign_bytes(chunk, groups)

    def encode(self, rows: Tensor, ids: Tensor | None = None, groups: int = 1) -> tuple[Tensor, Tensor]:
        """Rows ``(R, c)`` (``c`` a multiple of 8) and their group ids -> ``(payload (R, P) uint8, residual)``."""
        r, c = rows.shape
        ids = torch.zeros(r, c, dtype=torch.long, device=rows.device) if ids is None else ids.to(rows.device)
        flat_ids = (ids + groups * torch.arange(r, device=rows.device).unsqueeze(1)).reshape(-1)  # (R c,)
        size = rows.abs() if self.scale == "mean" else rows * rows
        sums = torch.zeros(r * groups, device=rows.device).index_add_(0, flat_ids, size.reshape(-1))
        counts = torch.bincount(flat_ids, minlength=r * groups).clamp_(min=1)
        scale = sums / counts if self.scale == "mean" else (sums / counts).sqrt()  # (R groups,)
        per_entry = scale[flat_ids].view(r, c)
        positive = rows >= 0
        sent = torch.where(positive, per_entry, -per_entry)
        bits = (positive.view(r, c // 8, 8).to(torch.uint8) * _BITS.to(rows.device)).sum(
            -1, dtype=torch.uint8
        )
        return torch.cat([bits, scale.view(r, groups).view(torch.uint8)], 1), rows - sent

    def decode(self, payload: Tensor, chunk: int, ids: Tensor | None = None) -> Tensor:
        r = payload.shape[0]
        scale = payload[:, chunk // 8 :].clone(memory_format=torch.contiguous_format).view(torch.float32)
        positive = (payload[:, : chunk // 8].unsqueeze(-1) & _BITS.to(payload.device)).ne(0).reshape(r, chunk)
        per_entry = scale[:, :1].expand(r, chunk) if ids is None else scale.gather(1, ids.to(payload.device))
        return torch.where(positive, per_entry, -per_entry)


@dataclass
class TopKCodec:
    """The ``ratio`` largest-magnitude entries of each row as fp32 values + int32 indices: ``8 k`` bytes."""

    ratio: float = 0.01
    multiple: int = CHUNK_MULTIPLE
    block: int | None = None  # unused: top-k has no scales

    def __post_init__(self) -> None:
        topk_count(1, self.ratio)  # validates the ratio

    def message_bytes(self, chunk: int, groups: int = 1) -> int:
        return topk_bytes(topk_count(chunk, self.ratio))

    def encode(self, rows: Tensor, ids: Tensor | None = None, groups: int = 1) -> tuple[Tensor, Tensor]:
        """Rows ``(R, c)`` -> ``(payload (R, 8k) uint8, residual)``; top-k has no scales (``ids`` unused)."""
        k = topk_count(rows.shape[1], self.ratio)
        idx = rows.abs().topk(k, dim=1, sorted=False).indices
        values = rows.gather(1, idx)
        residual = rows.scatter(1, idx, 0.0)
        payload = torch.cat([values.view(torch.uint8), idx.to(torch.int32).view(torch.uint8)], 1)
        return payload, residual

    def decode(self, payload: Tensor, chunk: int, ids: Tensor | None = None) -> Tensor:
        k = payload.shape[1] // 8
        values = payload[:, : 4 * k].clone(memory_format=torch.contiguous_format).view(torch.float32)
        idx = payload[:, 4 * k :].clone(memory_format=torch.contiguous_format).view(torch.int32).long()
        return torch.zeros(payload.shape[0], chunk, device=payload.device).scatter_(1, idx, values)


def make_codec(name: str, topk_ratio: float = 0.01, block: int | None = None) -> Codec:
    """``"1bit"`` -> :class:`SignCodec` (``block``), ``"topk"`` -> :class:`TopKCodec` (``topk_ratio``).

    Raises:
        ValueError: for another name.
    """
    if name == "1bit":
        return SignCodec(block)
    if name == "topk":
        return TopKCodec(topk_ratio)
    raise ValueError(f"codec {name!r} is not supported; choose '1bit' or 'topk'")


@dataclass
class ErrorFeedback:
    """The two error-feedback buffers of one compressed vector: worker-side (``n_pad``) and server-side (chunk)."""

    worker: Tensor | None = None
    server: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "server": self.server}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        def placed(t: Tensor | None) -> Tensor | None:
            return t.to(device) if t is not None and device is not None else t

        self.worker, self.server = placed(state.get("worker")), placed(state.get("server"))


@functools.lru_cache(maxsize=16)
def _layout(
    numel: int, world: int, chunk: int, segments: tuple[int, ...] | None, block: int | None, device: str
) -> tuple[Tensor, int]:
    # cached: a DDP bucket or an optimizer's momenta keep their layout for the whole run
    ids, groups = scale_groups(numel, world, chunk, list(segments) if segments is not None else None, block)
    return ids.to(device), groups


def _matching(buf: Tensor | None, numel: int) -> Tensor | None:
    # a buffer of another size (DDP rebuilt its buckets, the world size changed) is dropped, not misapplied
    return buf if buf is not None and buf.numel() == numel else None


def compressed_allreduce(
    tensor: Tensor,
    codec: Codec,
    ef: ErrorFeedback,
    group: Any = None,
    stats: Any = None,
    segments: list[int] | None = None,
) -> Tensor:
    """Average ``tensor`` over the group with the two-phase compressed scheme (see the module docstring).

    Args:
        tensor: this worker's vector (any shape; treated as flat; any float dtype, computed in fp32).
        codec: :class:`SignCodec` or :class:`TopKCodec`.
        ef: this vector's error-feedback buffers; updated in place (created on first use).
        group: the process group (None = world; one process without ``torch.distributed`` works, W = 1).
        stats: a :class:`kit.parallel.comm_hooks.CommStats` to count the wire bytes, or None.
        segments: sizes of the tensors packed in ``tensor`` (sum = numel), so that 1-bit scales never span
            two of them (see :func:`scale_groups`); None: one scale per chunk. Same on every worker.

    Returns:
        The averaged vector (fp32, the shape of ``tensor``), identical on every worker.
    """
    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    n = tensor.numel()
    chunk = chunk_size(n, world, codec.multiple)
    segs = tuple(segments) if segments is not None else None
    ids, groups = _layout(n, world, chunk, segs, codec.block, str(tensor.device))  # (W, chunk), int
    rank = dist.get_rank(group) if world > 1 else 0
    flat = torch.zeros(world * chunk, dtype=torch.float32, device=tensor.device)
    flat[:n] = tensor.detach().reshape(-1)
    worker = _matching(ef.worker, flat.numel())
    if worker is not None:
        flat += worker
    payload, residual = codec.encode(flat.view(world, chunk), ids, groups)  # (W, P)
    ef.worker = residual.reshape(-1)
    if world > 1:
        received = torch.empty_like(payload)
        dist.all_to_all_single(received, payload, group=group)
    else:
        received = payload
    # row i of ``received`` is worker i's message for this worker's chunk: decode it with this chunk's groups
    mine_ids = ids[rank : rank + 1].expand(world, chunk)
    mine = codec.decode(received, chunk, mine_ids).mean(0, keepdim=True)  # (1, chunk): the averaged chunk
    server = _matching(ef.server, chunk)
    if server is not None:
        mine += server.view(1, chunk)
    message, residual = codec.encode(mine, ids[rank : rank + 1], groups)  # (1, P)
    ef.server = residual.reshape(-1)
    if world > 1:
        gathered = torch.empty(world, message.shape[1], dtype=torch.uint8, device=tensor.device)
        dist.all_gather(list(gathered.unbind(0)), message[0], group=group)
    else:
        gathered = message
    if stats is not None:
        size = message.shape[1]
        stats.collective("all_to_all", payload.numel(), world)
        stats.collective("all_gather", size, world)
        stats.baseline(n, world)
    return codec.decode(gathered, chunk, ids).reshape(-1)[:n].view(tensor.shape)

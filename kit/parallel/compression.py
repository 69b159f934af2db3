"""Gradient compression as pure functions: top-k and 1-bit sign with error feedback, and byte accounting.

Both compressors take the residual left over from the previous step (error feedback, Seide et al. 2014;
Stich et al. 2018): what was not transmitted is added back before the next compression, so over many
steps nothing is lost: ``sum(transmitted) + residual == sum(gradients)``. ``*_bytes`` give the size of one
message; :func:`wire_bytes` turns the tensor a worker passes to a collective into the bytes it puts on the
wire at world size W, and :func:`method_wire_bytes` gives a whole method's bytes per step (the formulas the
kit's ``CommStats`` and the paper table in ``benchmarks/compression.py --paper`` use).

Example:
    >>> g = torch.tensor([0.1, -2.0, 0.3, 4.0])
    >>> values, indices, residual = topk_compress(g, ratio=0.5)
    >>> topk_decompress(values, indices, 4).tolist(), residual.tolist()
    ([0.0, -2.0, 0.0, 4.0], [0.10000000149011612, 0.0, 0.30000001192092896, 0.0])
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = [
    "CHUNK_MULTIPLE",
    "COLLECTIVES",
    "chunk_size",
    "dense_bytes",
    "group_count",
    "method_wire_bytes",
    "pack_bits",
    "powersgd_bytes",
    "sign_bytes",
    "sign_compress",
    "sign_decompress",
    "topk_bytes",
    "topk_compress",
    "topk_count",
    "topk_decompress",
    "unpack_bits",
    "wire_bytes",
]

# two-phase chunks are whole sign bytes (and whole top-k rows): every codec pads a chunk to this many entries
CHUNK_MULTIPLE = 8

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def topk_count(numel: int, ratio: float) -> int:
    """How many entries top-k keeps: ``ceil(ratio * numel)``, at least 1.

    Raises:
        ValueError: if ``ratio`` is not in (0, 1].
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio={ratio} must be in (0, 1]; 0.01 keeps the largest 1% of entries")
    return max(1, math.ceil(ratio * numel))


def topk_compress(
    tensor: Tensor, ratio: float, residual: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``ratio`` fraction of entries of ``tensor + residual`` largest in magnitude.

    Args:
        tensor: the gradient (any shape; treated as flat).
        ratio: fraction of entries to transmit, in (0, 1].
        residual: the error-feedback residual from the previous step (same numel) or None.

    Returns:
        ``(values, indices, new_residual)``: the kept values, their flat int64 indices, and what was not sent
        (flat, same dtype as ``tensor``).

    Raises:
        ValueError: if ``ratio`` is out of range or ``residual`` has the wrong size.
    """
    flat = tensor.detach().reshape(-1)
    if residual is not None:
        if residual.numel() != flat.numel():
            raise ValueError(
                f"residual has {residual.numel()} elements, tensor has {flat.numel()}; reset the residual"
            )
        flat = flat + residual.reshape(-1)
    else:
        flat = flat.clone()
    k = topk_count(flat.numel(), ratio)
    indices = flat.abs().topk(k, sorted=False).indices
    values = flat[indices]
    flat[indices] = 0
    return values, indices, flat


def topk_decompress(values: Tensor, indices: Tensor, numel: int) -> Tensor:
    """Scatter ``values`` at ``indices`` into a zero vector of length ``numel`` (repeated indices add up)."""
    out = torch.zeros(numel, dtype=values.dtype, device=values.device)
    return out.index_add_(0, indices.long(), values)


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a flat bool tensor into uint8, 8 bits per byte (little-endian within a byte), zero-padded."""
    bits = bits.reshape(-1).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return (bits.view(-1, 8) * _BIT_WEIGHTS.to(bits.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` bits as a bool tensor."""
    weights = _BIT_WEIGHTS.to(packed.device)
    return (packed.reshape(-1, 1) & weights).ne(0).reshape(-1)[:numel]


def _segment_ids(numel: int, segments: list[int] | None, device: torch.device) -> Tensor | None:
    if segments is None:
        return None
    if sum(segments) != numel:
        raise ValueError(
            f"segments sum to {sum(segments)} but the tensor has {numel} elements; pass its tensor sizes"
        )
    return torch.repeat_interleave(
        torch.arange(len(segments), device=device), torch.tensor(segments, device=device)
    )


def sign_compress(
    tensor: Tensor, residual: Tensor | None = None, segments: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """1-bit compression with scales: transmit ``sign(x) * mean(|x|)`` of ``x = tensor + residual``.

    Using the mean magnitude as the scale keeps the L1 mass of the message equal to that of ``x``
    (the 1-bit SGD / 1-bit Adam idea); the error goes into the residual. With ``segments`` (e.g. the sizes
    of the parameters packed in a DDP bucket) every segment gets its own scale, so layers with small
    gradients are not drowned by layers with large ones, for 4 extra bytes per segment.

    Args:
        tensor: the gradient (any shape; treated as flat).
        residual: the error-feedback residual from the previous step or None.
        segments: sizes of consecutive segments with their own scale (sum = numel), or None for one scale.

    Returns:
        ``(packed_signs, scales, new_residual)``: uint8 bits (1 = non-negative), float32 scales of shape
        ``(len(segments),)`` (or ``(1,)``), and ``x - decompressed`` (flat, same dtype as ``tensor``).

    Raises:
        ValueError: if ``residual`` or ``segments`` do not match the tensor's size.

    Example:
        >>> packed, scales, res = sign_compress(torch.tensor([1.0, -3.0, 0.5, 0.5]), segments=[2, 2])
        >>> sign_decompress(packed, scales, 4, segments=[2, 2]).tolist()
        [2.0, -2.0, 0.5, 0.5]
    """
    flat = tensor.detach().reshape(-1)
    if residual is not None:
        if residual.numel() != flat.numel():
            raise ValueError(
                f"residual has {residual.numel()} elements, tensor has {flat.numel()}; reset the residual"
            )
        flat = flat + residual.reshape(-1)
    ids = _segment_ids(flat.numel(), segments, flat.device)
    mags = flat.abs().float()
    if ids is None:
        scales = mags.mean().reshape(1) if flat.numel() else torch.zeros(1, device=flat.device)
        per_elem = scales.expand(flat.numel())
    else:
        counts = torch.tensor(segments, device=flat.device, dtype=torch.float32).clamp(min=1)
        scales = torch.zeros(len(segments), device=flat.device).index_add_(0, ids, mags) / counts
        per_elem = scales[ids]
    positive = flat >= 0
    sent = torch.where(positive, per_elem, -per_elem).to(flat.dtype)
    return pack_bits(positive), scales, flat - sent


def sign_decompress(
    packed: Tensor,
    scales: Tensor,
    numel: int,
    dtype: torch.dtype = torch.float32,
    segments: list[int] | None = None,
) -> Tensor:
    """Rebuild ``sign * scale`` from :func:`sign_compress`'s packed bits and scales (same ``segments``)."""
    positive = unpack_bits(packed, numel)
    ids = _segment_ids(numel, segments, packed.device)
    per_elem = scales.reshape(-1)[0].expand(numel) if ids is None else scales.reshape(-1)[ids]
    return torch.where(positive, per_elem, -per_elem).to(dtype)


def dense_bytes(numel: int, element_size: int = 4) -> int:
    """Bytes one worker contributes to a dense all-reduce of ``numel`` elements."""
    return numel * element_size


def topk_bytes(k: int, value_size: int = 4, index_size: int = 4) -> int:
    """Bytes of a top-k message: ``k`` values plus ``k`` indices (int32 indices by default)."""
    return k * (value_size + index_size)


def sign_bytes(numel: int, n_scales: int = 1, scale_size: int = 4) -> int:
    """Bytes of a 1-bit message: ``ceil(numel / 8)`` bytes of signs plus ``n_scales`` scales."""
    return math.ceil(numel / 8) + n_scales * scale_size


def powersgd_bytes(
    shapes: Iterable[tuple[int, ...]], rank: int, min_compression_rate: float = 2.0, element_size: int = 4
) -> int:
    """Bytes torch's ``powerSGD_hook`` sends for gradients of these shapes once compression has started.

    Mirrors its rule: each gradient is viewed as an ``n x m`` matrix (``shape[0] x rest``) and sent as
    P (``n x r``) and Q (``m x r``) with ``r = min(n, m, rank)`` when that is ``min_compression_rate``
    times smaller; otherwise (biases, norms, small matrices) it is all-reduced densely.

    Args:
        shapes: gradient shapes in one bucket or model.
        rank: ``matrix_approximation_rank``.
        min_compression_rate: torch's ``min_compression_rate``.
        element_size: bytes per element.

    Returns:
        Payload bytes per worker.

    Example:
        >>> powersgd_bytes([(1024, 1024), (1024,)], rank=4)  # P+Q of the matrix, the bias dense
        36864
    """
    total = 0
    for shape in shapes:
        n = shape[0] if shape else 1
        m = math.prod(shape[1:]) if len(shape) > 1 else 1
        r = min(n, m, rank)
        compressed = (n + m) * r
        total += compressed if compressed * min_compression_rate < n * m else n * m
    return total * element_size


COLLECTIVES = ("all_reduce", "all_gather", "all_to_all")


def wire_bytes(collective: str, tensor_bytes: float, world: int) -> float:
    """Bytes one worker sends (and, symmetrically, receives) in a collective on a ``tensor_bytes`` input.

    The bandwidth-optimal algorithms NCCL uses: ring all-reduce ``2 (W-1)/W x B`` (reduce-scatter then
    all-gather), ring all-gather ``(W-1) x B`` (``B`` = this worker's contribution), pairwise all-to-all
    ``(W-1)/W x B`` (``B`` = the whole input, one ``B/W`` slice per peer; the own slice stays local).
    Gloo's CPU algorithms may move the data differently; these are the figures a GPU cluster sees.

    Args:
        collective: ``all_reduce``, ``all_gather`` or ``all_to_all``.
        tensor_bytes: bytes of the tensor this worker passes in.
        world: number of workers.

    Raises:
        ValueError: for another collective or ``world < 1``.

    Example:
        >>> wire_bytes("all_reduce", 400, 4), wire_bytes("all_gather", 100, 4), wire_bytes("all_to_all", 400, 4)
        (600.0, 300.0, 300.0)
    """
    if world < 1:
        raise ValueError(f"world={world} must be >= 1")
    if collective == "all_reduce":
        return 2 * (world - 1) / world * tensor_bytes
    if collective == "all_gather":
        return float((world - 1) * tensor_bytes)
    if collective == "all_to_all":
        return (world - 1) / world * tensor_bytes
    raise ValueError(f"collective={collective!r} is not one of {', '.join(COLLECTIVES)}")


def chunk_size(numel: int, world: int, multiple: int = CHUNK_MULTIPLE) -> int:
    """Entries per worker chunk: ``ceil(numel / world)`` rounded up to ``multiple`` (whole sign bytes/blocks)."""
    return multiple * math.ceil(numel / (multiple * world)) if numel else multiple


def group_count(
    numel: int, world: int, chunk: int, segments: list[int] | None = None, block: int | None = None
) -> int:
    """The ``groups`` of :func:`kit.parallel.two_phase.scale_groups` by arithmetic (no tensors): usable for a 7B model's formula.

    Example:
        >>> group_count(6, 2, 4, segments=[3, 3]), group_count(10**9, 8, 125_000_000)
        (2, 1)
    """
    sizes = [numel] if segments is None else [int(s) for s in segments]
    if world * chunk > numel:
        sizes.append(world * chunk - numel)
    per_row = [0] * world
    start = 0
    for size in sizes:
        end = start + size
        for row in range(start // chunk, (end - 1) // chunk + 1) if size else ():
            lo, hi = max(start, row * chunk), min(end, (row + 1) * chunk)
            per_row[row] += 1 if block is None else (hi - 1 - start) // block - (lo - start) // block + 1
        start = end
    return max(per_row)


def method_wire_bytes(
    method: str,
    numel: int,
    world: int,
    topk_ratio: float = 0.01,
    powersgd_payload: int | None = None,
    n_scales: int = 1,
    block: int | None = None,
    segments: list[int] | None = None,
) -> float:
    """Wire bytes one worker sends per step to average ``numel`` fp32 gradients (or momenta) with ``method``.

    Methods: ``dense`` (fp32 ring all-reduce), ``fp16`` (fp16 ring all-reduce), ``powersgd`` (ring
    all-reduce of the P/Q (+ uncompressed) payload, pass ``powersgd_payload`` from :func:`powersgd_bytes`),
    ``topk-allgather`` / ``1bit-allgather`` (every worker's message all-gathered), ``topk-2phase`` /
    ``1bit-2phase`` (all-to-all of chunk messages, then all-gather of the re-compressed averages; see
    :mod:`kit.parallel.two_phase`). ``n_scales``: scales per all-gathered 1-bit message (one per tensor);
    ``segments``/``block``: the tensor sizes (and block) the two-phase 1-bit scales follow
    (:func:`kit.parallel.two_phase.scale_groups`; None: one scale per chunk).

    Raises:
        ValueError: for an unknown method, or ``powersgd`` without ``powersgd_payload``.

    Example:
        >>> n = 1_000_000
        >>> round(1 - method_wire_bytes("1bit-2phase", n, 64) / method_wire_bytes("dense", n, 64), 3)
        0.969
        >>> round(1 - method_wire_bytes("1bit-allgather", n, 64) / method_wire_bytes("dense", n, 64), 3)
        -0.0
    """
    if method == "dense":
        return wire_bytes("all_reduce", 4 * numel, world)
    if method == "fp16":
        return wire_bytes("all_reduce", 2 * numel, world)
    if method == "powersgd":
        if powersgd_payload is None:
            raise ValueError("method='powersgd' needs powersgd_payload=powersgd_bytes(shapes, rank)")
        return wire_bytes("all_reduce", powersgd_payload, world)
    if method == "topk-allgather":
        return wire_bytes("all_gather", topk_bytes(topk_count(numel, topk_ratio)), world)
    if method == "1bit-allgather":
        return wire_bytes("all_gather", sign_bytes(numel, n_scales), world)
    if method in ("topk-2phase", "1bit-2phase"):
        chunk = chunk_size(numel, world)
        if method == "topk-2phase":
            msg = topk_bytes(topk_count(chunk, topk_ratio))
        else:
            msg = sign_bytes(chunk, group_count(numel, world, chunk, segments, block))
        return wire_bytes("all_to_all", world * msg, world) + wire_bytes("all_gather", msg, world)
    raise ValueError(
        f"method={method!r} is not supported; choose dense, fp16, powersgd, topk-allgather, 1bit-allgather, "
        "topk-2phase or 1bit-2phase"
    )

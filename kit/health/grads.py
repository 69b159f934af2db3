"""Gradient health math: norms, cosine between steps, update/weight ratio, band tracking.

Everything here is framework-free and stays on the tensors' device: functions return tensors,
never Python floats, so a caller decides when (and whether) to pay for a host sync.

The cosine between consecutive gradients needs the previous gradient. Keeping a full copy doubles
gradient memory, so :class:`GradientSketch` keeps a fixed random projection instead: a CountSketch
(each coordinate goes to one of ``dim`` buckets with a random sign). The bucket and sign of every
coordinate are regenerated from a seed on demand, so the persistent memory is ``dim`` floats no
matter how large the model is, and the sketch is linear, so ``sketch(a) - sketch(b) = sketch(a - b)``
(which gives micro-batch gradients under accumulation for free). Inner products are preserved in
expectation, with an error of order ``|a| |b| / sqrt(dim)``.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 2)
    >>> model(torch.randn(8, 4)).pow(2).mean().backward()
    >>> total, per_layer = grad_norms(dict(model.named_parameters()))
    >>> sorted(per_layer)
    ['bias', 'weight']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BandTracker",
    "GradientSketch",
    "cosine_similarity",
    "flat_grads",
    "grad_norms",
    "group_by_layer",
    "update_to_weight_ratios",
]


def group_by_layer(names: Iterable[str], depth: int | None = None) -> dict[str, list[str]]:
    """Group parameter names into layers.

    Args:
        names: parameter names such as ``"blocks.0.attn.qkv.weight"``.
        depth: keep this many leading name components as the layer name (``2`` gives
            ``"blocks.0"``); ``None`` groups by owning module (drops the last component).

    Returns:
        Ordered mapping layer name -> parameter names.

    Raises:
        ValueError: if ``depth`` is not positive.

    Example:
        >>> group_by_layer(["a.0.w", "a.0.b", "a.1.w"], depth=2)
        {'a.0': ['a.0.w', 'a.0.b'], 'a.1': ['a.1.w']}
    """
    if depth is not None and depth < 1:
        raise ValueError(f"depth={depth} must be >= 1 or None (group by owning module)")
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:depth]) if depth is not None else ".".join(parts[:-1]) or name
        groups.setdefault(key, []).append(name)
    return groups


def grad_norms(
    params: Mapping[str, Tensor],
    groups: Mapping[str, list[str]] | None = None,
    scale: Tensor | float | None = None,
    norm_type: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Norm of all gradients and of each group, computed on device without a host sync.

    The kit's one gradient-norm function: ``kit.precision.clipping.grad_norm`` and the monitors'
    ``global_grad_norm`` call it. The global norm is the norm of the per-tensor norms, which is what
    ``torch.nn.utils.get_total_norm`` (and so ``clip_grad_norm_``) computes; for float32 gradients on
    one device the two are bit-identical. Per-tensor norms are combined in float32, so bf16/fp16
    gradients give a float32 norm.

    Args:
        params: name -> parameter; parameters whose ``.grad`` is ``None`` are ignored.
        groups: layer name -> parameter names (see :func:`group_by_layer`); ``None`` means
            one group per parameter, ``{}`` none (global norm only).
        scale: divide the norms by this (the loss scale when gradients are still scaled).
        norm_type: p of the p-norm (``float("inf")`` for the max norm).

    Returns:
        ``(global_norm, {group: norm})`` as 0-dim float32 tensors (global norm is 0 if no grads).

    Example:
        >>> p = torch.nn.Parameter(torch.ones(4)); p.grad = torch.full((4,), 2.0)
        >>> float(grad_norms({"p": p})[0])
        4.0
    """
    named = [(n, p.grad) for n, p in params.items() if p.grad is not None]
    if not named:
        return torch.zeros(()), {}
    grads = [g.detach() for _, g in named]
    device = grads[0].device  # combined where the first gradient lives, as get_total_norm does
    norms = [n.float().to(device) for n in torch._foreach_norm(grads, norm_type)]
    by_name = {n: v for (n, _), v in zip(named, norms)}
    total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
    if groups is None:
        per = by_name
    else:
        per = {}
        for layer, names in groups.items():
            vals = [by_name[n] for n in names if n in by_name]
            if vals:
                per[layer] = torch.linalg.vector_norm(torch.stack(vals), norm_type)
    if scale is not None:
        total = total / scale
        per = {k: v / scale for k, v in per.items()}
    return total, per


def flat_grads(params: Iterable[Tensor]) -> Tensor:
    """Concatenate all gradients into one float32 vector (zeros where ``.grad`` is ``None``)."""
    parts = [
        (p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)).reshape(
            -1
        )
        for p in params
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of two flat vectors as a 0-dim tensor; 0 when either is all zeros.

    Example:
        >>> float(cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])))
        1.0
    """
    a, b = a.reshape(-1).float(), b.reshape(-1).float()
    denom = (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)).clamp_min(eps)
    return torch.dot(a, b) / denom


class GradientSketch:
    """Fixed random projection (CountSketch) of a model's gradients with ``dim`` floats of memory.

    When the model has at most ``dim`` parameters the "sketch" is the exact flat gradient, so
    small models get exact cosines.

    Args:
        dim: sketch size; error of a cosine is about ``1 / sqrt(dim)``.
        seed: fixes the projection; the same seed gives the same buckets and signs.
        chunk: coordinates hashed at a time, bounding the transient memory (part of the
            projection's definition: keep it fixed between the two gradients compared).

    Raises:
        ValueError: if ``dim`` < 16.

    Example:
        >>> sk = GradientSketch(dim=1024)
        >>> g = [torch.randn(5000)]
        >>> float(cosine_similarity(sk.project(g), sk.project(g)))
        1.0
    """

    def __init__(self, dim: int = 8192, seed: int = 0, chunk: int = 1 << 22) -> None:
        if dim < 16:
            raise ValueError(f"dim={dim} must be >= 16; pass dim=8192 (cosine error ~1%)")
        self.dim, self.seed, self.chunk = dim, seed, chunk

    @torch.no_grad()
    def project(self, tensors: Iterable[Tensor | None], like: Iterable[Tensor] | None = None) -> Tensor:
        """Project a list of tensors (e.g. gradients; ``None`` counts as zeros) to ``dim`` floats.

        Args:
            tensors: one tensor (or ``None``) per parameter, always in the same order.
            like: the parameters, used for the shape of ``None`` entries.
        """
        tensors = list(tensors)
        shapes = list(like) if like is not None else tensors
        total = sum(t.numel() for t in shapes if t is not None)
        device = next((t.device for t in tensors if t is not None), torch.device("cpu"))
        if total <= self.dim:  # exact: small model
            out = torch.zeros(total, device=device)
            offset = 0
            for t, s in zip(tensors, shapes):
                n = s.numel()
                if t is not None:
                    out[offset : offset + n] = t.detach().reshape(-1).float()
                offset += n
            return out
        # Walk the concatenated vector in fixed chunks (few large kernels instead of several per
        # parameter); each chunk's buckets and signs come from a generator seeded by its index.
        out = torch.zeros(self.dim, device=device)
        parts: list[Tensor] = []
        filled, chunk_id = 0, 0

        def flush() -> None:
            nonlocal parts, filled, chunk_id
            if not parts:
                return
            block = torch.cat(parts) if len(parts) > 1 else parts[0]
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed * 1_000_003 + chunk_id)
            idx = torch.randint(self.dim, block.shape, generator=gen, device=device)
            sign = torch.randint(2, block.shape, generator=gen, device=device, dtype=torch.int8)
            out.index_add_(0, idx, block * (sign.float() * 2 - 1))
            parts, filled, chunk_id = [], 0, chunk_id + 1

        for t, s in zip(tensors, shapes):
            flat = (
                t.detach().reshape(-1) if t is not None else torch.zeros(s.numel(), device=device)
            ).float()
            start = 0
            while start < flat.numel():
                take = min(self.chunk - filled, flat.numel() - start)
                parts.append(flat[start : start + take])
                filled += take
                start += take
                if filled == self.chunk:
                    flush()
        flush()
        return out


def update_to_weight_ratios(
    before: Mapping[str, Tensor],
    after: Mapping[str, Tensor],
    groups: Mapping[str, list[str]] | None = None,
    eps: float = 1e-12,
) -> dict[str, Tensor]:
    """``|w_after - w_before| / |w_before|`` per group; ~1e-3 per step is the usual target.

    Args:
        before: name -> weights before the optimizer step.
        after: name -> weights after it (same names).
        groups: layer -> parameter names; ``None`` means one group per parameter.
        eps: floor for the denominator.

    Returns:
        group -> 0-dim tensor ratio.

    Example:
        >>> r = update_to_weight_ratios({"w": torch.ones(4)}, {"w": torch.full((4,), 1.001)})
        >>> round(float(r["w"]), 6)
        0.001
    """
    names = [n for n in before if n in after]
    b = [before[n].detach().float() for n in names]
    d = torch._foreach_sub([after[n].detach().float() for n in names], b) if names else []
    dn = dict(zip(names, torch._foreach_norm(d, 2.0))) if names else {}
    wn = dict(zip(names, torch._foreach_norm(b, 2.0))) if names else {}
    groups = groups or {n: [n] for n in names}
    out: dict[str, Tensor] = {}
    for layer, members in groups.items():
        m = [n for n in members if n in dn]
        if not m:
            continue
        num = torch.linalg.vector_norm(torch.stack([dn[n] for n in m]))
        den = torch.linalg.vector_norm(torch.stack([wn[n] for n in m])).clamp_min(eps)
        out[layer] = num / den
    return out


@dataclass
class BandTracker:
    """Counts, on device, how many consecutive steps a value stayed outside ``[low, high]``.

    ``update`` never syncs; ``worst_run()`` returns the longest run since the last ``reset_worst``
    (read it on logging steps only).

    Args:
        low: lower edge of the healthy band.
        high: upper edge.

    Raises:
        ValueError: if ``low >= high`` or ``low < 0``.

    Example:
        >>> bt = BandTracker(0.5, 2.0)
        >>> for v in [1.0, 3.0, 3.0, 1.0]:
        ...     bt.update(torch.tensor(v))
        >>> int(bt.worst_run())
        2
    """

    low: float = 0.5
    high: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise ValueError(f"band=({self.low}, {self.high}) needs 0 <= low < high; e.g. band=(0.5, 2.0)")
        self.run: Tensor | None = None
        self.worst: Tensor | None = None
        self.last: Tensor | None = None

    def update(self, value: Tensor) -> None:
        """Record one step's value (a 0-dim tensor on any device)."""
        v = value.detach().float()
        outside = ((v < self.low) | (v > self.high)).float()
        if self.run is None:
            self.run = torch.zeros((), device=v.device)
            self.worst = torch.zeros((), device=v.device)
        elif self.run.device != v.device:  # restored from a checkpoint on CPU
            self.run, self.worst = self.run.to(v.device), self.worst.to(v.device)
        self.run = (self.run + 1) * outside
        self.worst = torch.maximum(self.worst, self.run)
        self.last = v

    @property
    def last_side(self) -> float:
        """+1 if the last value was above the band, -1 below, 0 inside (syncs: read on log steps)."""
        if self.last is None:
            return 0.0
        v = float(self.last)
        return 1.0 if v > self.high else (-1.0 if v < self.low else 0.0)

    def worst_run(self) -> Tensor:
        """Longest out-of-band run since the last reset (0-dim tensor)."""
        return self.worst if self.worst is not None else torch.zeros(())

    def reset_worst(self) -> None:
        """Start a new reporting window (keeps the current run)."""
        if self.worst is not None:
            self.worst = self.run.clone()

    def state_dict(self) -> dict:
        """Host copy of the counters."""
        return {
            "run": float(self.run) if self.run is not None else 0.0,
            "worst": float(self.worst) if self.worst is not None else 0.0,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore counters saved by :meth:`state_dict`."""
        self.run = torch.tensor(float(state.get("run", 0.0)))
        self.worst = torch.tensor(float(state.get("worst", 0.0)))

"""Rotary position embeddings (RoPE, Su et al. 2021), with Llama-3 frequency scaling.

``GPTConfig(position="rope")`` drops the learned position embedding and rotates each attention layer's queries
and keys instead; :class:`RopeConfig` (``GPTConfig.rope``) holds ``theta`` and the optional scaling.

The convention is Hugging Face's Llama (``rotate_half``): channel ``i`` of a head pairs with channel
``i + head_dim / 2`` (the two halves), not with its neighbour ``i + 1`` as in the paper and Meta's original code.
Checkpoints in Hugging Face's format already store their q/k weights for this convention, so the kit loads them
as they are, with no permutation of rows.

Nothing here is shared between layers or kept between calls: each forward computes the angles from the
positions ``0..T-1``, so pipeline stages, activation checkpointing and tensor parallelism (which splits heads,
never channels within a head) need nothing special.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LLAMA3_SCALING_KEYS", "RopeConfig", "apply_rotary", "rope_frequencies", "rotate_half"]

# the keys of a Llama-3 scaling dict (Hugging Face's rope_scaling with rope_type "llama3")
LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class RopeConfig:
    """Settings of ``position="rope"`` (``GPTConfig.rope``), checked when built.

    Example:
        >>> RopeConfig(theta=500000.0).theta
        500000.0
        >>> RopeConfig(scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        ...                     "original_max_position_embeddings": 8192}).scaling["factor"]
        8.0
    """

    theta: float = 10000.0  # the base of the geometric frequency ladder (Llama 2: 1e4, Llama 3: 5e5)
    # None, or Llama-3's frequency scaling: factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings (Llama 3.1 uses 8, 1, 4, 8192)
    scaling: dict | None = None

    def __post_init__(self) -> None:
        self.theta = float(self.theta)
        if self.theta <= 1.0:
            raise ValueError(f"rope.theta={self.theta} must be > 1 (Llama 2 uses 10000.0, Llama 3 500000.0)")
        if self.scaling is None:
            return
        given = {k: v for k, v in dict(self.scaling).items() if k != "rope_type"}
        missing = [k for k in LLAMA3_SCALING_KEYS if k not in given]
        unknown = sorted(set(given) - set(LLAMA3_SCALING_KEYS))
        if missing or unknown:
            raise ValueError(
                f"rope.scaling={self.scaling} is not Llama-3 scaling: it needs exactly {list(LLAMA3_SCALING_KEYS)} "
                f"(missing {missing}, unknown {unknown}); or set rope.scaling to null"
            )
        self.scaling = {k: float(given[k]) for k in LLAMA3_SCALING_KEYS}
        if self.scaling["high_freq_factor"] <= self.scaling["low_freq_factor"]:
            raise ValueError(
                f"rope.scaling high_freq_factor={self.scaling['high_freq_factor']} must exceed "
                f"low_freq_factor={self.scaling['low_freq_factor']} (Llama 3.1: 4 and 1)"
            )


def rope_frequencies(
    head_dim: int, theta: float = 10000.0, scaling: dict | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """The ``head_dim / 2`` inverse frequencies ``theta ** (-2i / head_dim)``, Llama-3 scaled when asked.

    Llama-3 scaling leaves wavelengths shorter than ``original / high_freq_factor`` as they are, divides those
    longer than ``original / low_freq_factor`` by ``factor``, and interpolates smoothly in between.

    Args:
        head_dim: channels per head (even).
        theta: the frequency base.
        scaling: None, or a :class:`RopeConfig` ``scaling`` dict.
        device: where to build them.

    Returns:
        float32 tensor of shape (head_dim / 2,).

    Example:
        >>> rope_frequencies(4, theta=100.0).tolist()
        [1.0, 0.10000000149011612]
    """
    if head_dim % 2:
        raise ValueError(f"head_dim={head_dim} must be even for rotary embeddings; pick n_embd / n_head even")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` for the halves ``x1, x2`` of the last dimension (Hugging Face's convention).

    Example:
        >>> rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
        [-3.0, -4.0, 1.0, 2.0]
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, theta: float = 10000.0, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by their positions ``0..T-1``.

    The angles are computed in float32 and the rotation runs in the inputs' dtype, as Hugging Face's Llama does.

    Args:
        q: queries, shape (B, nh, T, hs).
        k: keys, shape (B, n_kv, T, hs).
        theta: the frequency base.
        scaling: None, or Llama-3 scaling (:class:`RopeConfig`).

    Returns:
        The rotated ``(q, k)``, same shapes and dtypes.

    Example:
        >>> q = torch.randn(1, 2, 5, 8)
        >>> qr, kr = apply_rotary(q, q)
        >>> torch.allclose(qr[..., 0, :], q[..., 0, :])  # position 0 is not rotated
        True
    """
    T, hs = q.size(-2), q.size(-1)
    inv_freq = rope_frequencies(hs, theta, scaling, device=q.device)
    pos = torch.arange(T, device=q.device, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]  # (T, hs / 2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
    cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

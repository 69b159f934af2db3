"""Self-attention layers, chosen by ``GPTConfig.attention`` through :func:`get_attention`.

- ``"dense"``: every query over every (earlier, when causal) key, through SDPA.
- ``"sliding_window"``: the Longformer pattern (Beltagy et al. 2020): each query sees the keys less than
  ``sliding.window`` positions away (only earlier ones when causal), plus ``sliding.global_positions`` that see every
  key and are seen by every query. On CUDA it runs through FlexAttention with a ``BlockMask`` built once per
  shape and cached, so blocks the window never reaches are skipped and time and memory grow linearly with
  length; elsewhere (CPU, attention dropout, no FlexAttention) an exact masked-SDPA path runs, with the same
  result. Where the kit differs from Longformer: in a causal model a global token attends to every *earlier*
  token (not the future ones, which would leak the targets), and the window is one-sided.

Each variant is a function over ``(B, nh, T, hs)`` heads plus a module that owns the projections and calls it
(timm's ``drop_path`` / ``DropPath`` split). The modules take explicit arguments and build from a ``GPTConfig``
through ``from_config``; the sliding window's settings are :class:`SlidingWindowConfig` (``GPTConfig.sliding``).
A new variant is one function/module pair and one ``ATTENTION`` entry; ``tests/test_layers.py`` then runs it
through the whole model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.layers._factory import resolve

if TYPE_CHECKING:
    from kit.nn import GPTConfig

__all__ = [
    "ATTENTION",
    "DenseAttention",
    "SlidingWindowAttention",
    "SlidingWindowConfig",
    "dense_attention",
    "get_attention",
    "qkv_head_major",
    "qkv_stacked",
    "sliding_window_attention",
    "sliding_window_mask",
]


@dataclass
class SlidingWindowConfig:
    """Settings of ``attention="sliding_window"`` (``GPTConfig.sliding``), checked when built.

    Example:
        >>> SlidingWindowConfig(window=32, global_positions=(0,))
        SlidingWindowConfig(window=32, global_positions=[0])
    """

    window: int = 64  # a query sees keys fewer than `window` positions away (earlier ones only when causal)
    # positions that see every key and are seen by every query
    global_positions: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.global_positions = [int(g) for g in self.global_positions]
        if self.window < 1:
            raise ValueError(f"sliding.window={self.window} must be >= 1 (1: each token sees only itself)")
        if any(g < 0 for g in self.global_positions):
            raise ValueError(
                f"sliding.global_positions={self.global_positions} must hold positions >= 0, "
                "e.g. [0] for the first token"
            )


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, dropout_p: float = 0.0
) -> torch.Tensor:
    """Softmax attention of every query over every key (or every earlier key when ``causal``), via SDPA.

    Args:
        q: queries, shape (B, nh, T, hs).
        k: keys, shape (B, nh, T, hs).
        v: values, shape (B, nh, T, hs).
        causal: mask keys after each query (decoders); False attends both ways (MLM encoders).
        dropout_p: dropout on the attention probabilities; pass 0.0 in evaluation.

    Returns:
        The attended values, shape (B, nh, T, hs).

    Example:
        >>> q = torch.randn(1, 2, 5, 8)
        >>> dense_attention(q, q, q).shape
        torch.Size([1, 2, 5, 8])
    """
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


def sliding_window_mask(
    seq_len: int,
    window: int,
    global_positions: Sequence[int] = (),
    *,
    causal: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The (T, T) boolean pattern of :func:`sliding_window_attention`: True where query ``i`` sees key ``j``.

    ``|i - j| < window`` (and ``j <= i`` when causal), or ``i`` or ``j`` a global position (still ``j <= i``
    when causal). Global positions at or past ``seq_len`` are ignored.

    Example:
        >>> sliding_window_mask(4, 2, causal=True).int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
        >>> sliding_window_mask(4, 1, [0], causal=False).int().tolist()
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]]
    """
    pos = torch.arange(seq_len, device=device)
    dist = pos[:, None] - pos[None, :]  # (T, T): query minus key
    mask = dist.abs() < window
    glob = _global_flags(seq_len, tuple(global_positions), pos.device)
    mask |= glob[:, None] | glob[None, :]
    if causal:
        mask &= dist >= 0
    return mask


def _global_flags(seq_len: int, global_positions: tuple[int, ...], device: torch.device) -> torch.Tensor:
    flags = torch.zeros(seq_len, dtype=torch.bool, device=device)
    inside = [g for g in global_positions if g < seq_len]
    if inside:
        flags[torch.tensor(inside, device=device)] = True
    return flags


@lru_cache(maxsize=32)
def _cached_mask(seq_len: int, window: int, glob: tuple[int, ...], causal: bool, device: torch.device):
    return sliding_window_mask(seq_len, window, glob, causal=causal, device=device)


@lru_cache(maxsize=32)
def _cached_block_mask(seq_len: int, window: int, glob: tuple[int, ...], causal: bool, device: torch.device):
    """FlexAttention's ``BlockMask`` for one shape: built once, then reused by every layer and step."""
    from torch.nn.attention.flex_attention import create_block_mask

    flags = _global_flags(seq_len, glob, device)

    def mask_mod(b, h, q_idx, kv_idx):  # FlexAttention passes batch and head too
        dist = q_idx - kv_idx
        keep = (dist.abs() < window) | flags[q_idx] | flags[kv_idx]
        return keep & (dist >= 0) if causal else keep

    return create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device)


_FLEX = None


def _flex_attention():
    """``torch.compile(flex_attention)``, built on first use (compiling is what makes it sparse and fast)."""
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def flex_available(device: torch.device) -> bool:
    """True where the FlexAttention path runs: a CUDA device and a torch that has it."""
    if device.type != "cuda":
        return False
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    global_positions: Sequence[int] = (),
    causal: bool = True,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Longformer attention: a local window plus global positions (see :func:`sliding_window_mask`).

    Args:
        q: queries, shape (B, nh, T, hs).
        k: keys, shape (B, nh, T, hs).
        v: values, shape (B, nh, T, hs).
        window: each query sees keys fewer than ``window`` positions away (on both sides unless causal).
        global_positions: positions that see all keys and are seen by all queries.
        causal: never attend to later keys.
        dropout_p: dropout on the attention probabilities (forces the SDPA path: FlexAttention has none).
        backend: ``"flex"`` (FlexAttention, compiled, with a cached ``BlockMask``), ``"sdpa"`` (SDPA with a
            cached dense boolean mask: exact, but memory quadratic in T), or ``"auto"`` (flex on CUDA without
            dropout, else sdpa).

    Returns:
        The attended values, shape (B, nh, T, hs).

    Raises:
        ValueError: on ``window < 1`` or an unknown ``backend``.

    Example:
        >>> q = torch.randn(1, 2, 6, 8)
        >>> torch.allclose(sliding_window_attention(q, q, q, window=6), dense_attention(q, q, q), atol=1e-6)
        True
    """
    if window < 1:
        raise ValueError(f"window={window} must be >= 1 (the query's own position)")
    if backend not in ("auto", "flex", "sdpa"):
        raise ValueError(f"backend={backend!r} is not one of ['auto', 'flex', 'sdpa']")
    T = q.size(-2)
    glob = tuple(sorted({int(g) for g in global_positions if g < T}))
    if backend == "auto":
        backend = "flex" if dropout_p == 0.0 and flex_available(q.device) else "sdpa"
    if backend == "flex":
        block_mask = _cached_block_mask(T, window, glob, causal, q.device)
        # compiled on CUDA (fast and sparse); eager elsewhere (forward only, for tests of the flex path on CPU)
        fn = _flex_attention() if q.is_cuda else _eager_flex()
        return fn(q, k, v, block_mask=block_mask)
    if window >= T and not glob:  # the pattern is dense: let SDPA pick its fused kernel
        return dense_attention(q, k, v, causal=causal, dropout_p=dropout_p)
    mask = _cached_mask(T, window, glob, causal, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _eager_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def qkv_head_major(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder a fused QKV weight or bias from ``[q; k; v]`` stacked rows to :class:`DenseAttention`'s head-major rows.

    Use it to load nanoGPT / Hugging Face GPT-2 style ``c_attn`` weights (transpose GPT-2's ``Conv1D`` weight
    to ``(3 * n_embd, n_embd)`` first), or a kit checkpoint written before the layout changed.

    Args:
        t: ``(3 * n_embd, ...)``, rows ordered (q|k|v, head, head_dim).
        n_head: attention heads.

    Returns:
        The same values with rows ordered (head, q|k|v, head_dim).

    Example:
        >>> qkv_head_major(torch.arange(6.0), n_head=2).tolist()  # q0 q1 k0 k1 v0 v1 -> q0 k0 v0 q1 k1 v1
        [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
    """
    if t.size(0) % (3 * n_head):
        raise ValueError(f"first dimension {t.size(0)} does not divide by 3 * n_head = {3 * n_head}")
    rest = t.shape[1:]
    return t.reshape(3, n_head, -1, *rest).transpose(0, 1).reshape(t.shape)


def qkv_stacked(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of :func:`qkv_head_major`: head-major rows back to ``[q; k; v]`` stacked.

    Example:
        >>> qkv_stacked(torch.tensor([0.0, 2.0, 4.0, 1.0, 3.0, 5.0]), n_head=2).tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """
    if t.size(0) % (3 * n_head):
        raise ValueError(f"first dimension {t.size(0)} does not divide by 3 * n_head = {3 * n_head}")
    rest = t.shape[1:]
    return t.reshape(n_head, 3, -1, *rest).transpose(0, 1).reshape(t.shape)


class DenseAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection over :func:`dense_attention`.

    The fused ``qkv`` weight is head-major, as Megatron-LM's: its ``3 * n_embd`` output rows are ordered
    (head, {q, k, v}, head_dim), not ``[q; k; v]`` stacked as in nanoGPT / Hugging Face GPT-2's ``c_attn``
    (:func:`qkv_head_major` converts such a weight). Splitting the rows into equal contiguous parts hands
    each part whole heads of q, k and v, which is what tensor parallelism needs.

    Args:
        n_embd: model width C; must divide by ``n_head``.
        n_head: attention heads.
        bias: biases in the QKV and output projections.
        causal: mask later keys (decoders); False attends both ways (MLM encoders).
        attn_dropout: dropout on the attention probabilities (training only).
        dropout: residual dropout after the output projection.

    Raises:
        ValueError: if ``n_embd`` does not divide by ``n_head``.

    Example:
        >>> DenseAttention(32, 2)(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
        >>> from kit.nn import GPTConfig
        >>> DenseAttention.from_config(GPTConfig.from_name("debug")).n_head
        2
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        bias: bool = True,
        causal: bool = True,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(
                f"n_embd={n_embd} is not divisible by n_head={n_head}; pick a head count dividing it"
            )
        self.n_head = n_head
        self.causal = causal
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config: GPTConfig) -> DenseAttention:
        """The layer with ``config``'s width, heads, bias, causality and dropouts."""
        return cls(config.n_embd, config.n_head, **cls._common(config))

    @staticmethod
    def _common(config: GPTConfig) -> dict[str, object]:
        return {
            "bias": config.bias,
            "causal": config.causal,
            "attn_dropout": config.attn_dropout,
            "dropout": config.dropout,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # head-major fused layout (Megatron's): output features are (head, q|k|v, head_dim), so a plain row split
        # of the weight gives each tensor-parallel rank (kit.parallel.tensor) whole heads of q, k and v; -1 is
        # n_head, or n_head / tp on one rank
        qkv = self.qkv(x).view(B, T, -1, 3, C // self.n_head)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))  # (B, nh, T, hs)
        y = self._attend(q, k, v, self.attn_dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, C), or C / tp per rank
        return self.resid_dropout(self.proj(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        return dense_attention(q, k, v, causal=self.causal, dropout_p=dropout_p)


class SlidingWindowAttention(DenseAttention):
    """:class:`DenseAttention`'s projections over :func:`sliding_window_attention`.

    Args:
        n_embd: model width C; must divide by ``n_head``.
        n_head: attention heads.
        window: each query sees keys fewer than ``window`` positions away.
        global_positions: positions that see every key and are seen by every query.
        **kwargs: ``bias``, ``causal``, ``attn_dropout`` and ``dropout``, as :class:`DenseAttention`.

    Raises:
        ValueError: for ``window < 1`` or a negative global position.

    Example:
        >>> SlidingWindowAttention(32, 2, window=4, global_positions=(0,))(torch.randn(2, 8, 32)).shape
        torch.Size([2, 8, 32])
        >>> from kit.nn import GPTConfig
        >>> cfg = GPTConfig.from_name("debug", attention="sliding_window", sliding={"window": 4})
        >>> SlidingWindowAttention.from_config(cfg).window
        4
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        window: int = 64,
        global_positions: Sequence[int] = (),
        bias: bool = True,
        causal: bool = True,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_embd, n_head, bias=bias, causal=causal, attn_dropout=attn_dropout, dropout=dropout)
        checked = SlidingWindowConfig(window, list(global_positions))
        self.window = checked.window
        self.global_positions = tuple(checked.global_positions)

    @classmethod
    def from_config(cls, config: GPTConfig) -> SlidingWindowAttention:
        """The layer with ``config``'s shape and ``config.sliding``'s window and global positions."""
        s = config.sliding
        return cls(
            config.n_embd,
            config.n_head,
            window=s.window,
            global_positions=s.global_positions,
            **cls._common(config),
        )

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        return sliding_window_attention(
            q,
            k,
            v,
            window=self.window,
            global_positions=self.global_positions,
            causal=self.causal,
            dropout_p=dropout_p,
        )


ATTENTION: dict[str, type[nn.Module]] = {"dense": DenseAttention, "sliding_window": SlidingWindowAttention}


def get_attention(kind: str | type[nn.Module]) -> type[nn.Module]:
    """The attention class for ``GPTConfig.attention``: a name from ``ATTENTION`` or a class (returned as is).

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
        >>> get_attention("dense").__name__
        'DenseAttention'
    """
    return resolve(kind, ATTENTION, "attention")

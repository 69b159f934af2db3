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
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.layers._factory import resolve
from kit.nn.layers.rotary import RopeConfig, apply_rotary

if TYPE_CHECKING:
    from kit.nn import GPTConfig

__all__ = [
    "ATTENTION",
    "DenseAttention",
    "SlidingWindowAttention",
    "SlidingWindowConfig",
    "dense_attention",
    "get_attention",
    "qkv_grouped",
    "qkv_head_major",
    "qkv_split",
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

    Grouped-query attention: ``k`` and ``v`` may have fewer heads than ``q`` (a divisor of them); query head
    ``h`` then reads key/value head ``h // (nh / n_kv)``.

    Args:
        q: queries, shape (B, nh, T, hs).
        k: keys, shape (B, n_kv, T, hs).
        v: values, shape (B, n_kv, T, hs).
        causal: mask keys after each query (decoders); False attends both ways (MLM encoders).
        dropout_p: dropout on the attention probabilities; pass 0.0 in evaluation.

    Returns:
        The attended values, shape (B, nh, T, hs).

    Example:
        >>> q = torch.randn(1, 2, 5, 8)
        >>> dense_attention(q, q, q).shape
        torch.Size([1, 2, 5, 8])
    """
    return F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, is_causal=causal, enable_gqa=k.size(-3) != q.size(-3)
    )


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
        k: keys, shape (B, n_kv, T, hs); n_kv divides nh (grouped-query attention).
        v: values, shape (B, n_kv, T, hs).
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
    gqa = k.size(-3) != q.size(-3)
    glob = tuple(sorted({int(g) for g in global_positions if g < T}))
    if backend == "auto":
        backend = "flex" if dropout_p == 0.0 and flex_available(q.device) else "sdpa"
    if backend == "flex":
        block_mask = _cached_block_mask(T, window, glob, causal, q.device)
        # compiled on CUDA (fast and sparse); eager elsewhere (forward only, for tests of the flex path on CPU)
        fn = _flex_attention() if q.is_cuda else _eager_flex()
        return fn(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    if window >= T and not glob:  # the pattern is dense: let SDPA pick its fused kernel
        return dense_attention(q, k, v, causal=causal, dropout_p=dropout_p)
    mask = _cached_mask(T, window, glob, causal, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


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


def _check_heads(n_head: int, n_kv_head: int) -> None:
    if n_kv_head < 1 or n_head % n_kv_head:
        divisors = [g for g in range(1, n_head + 1) if n_head % g == 0]
        raise ValueError(
            f"n_kv_head={n_kv_head} does not divide n_head={n_head}; pick one of {divisors} "
            "(n_head: multi-head, 1: multi-query)"
        )


def qkv_grouped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int, n_kv_head: int
) -> torch.Tensor:
    """Fuse separate q, k, v projection weights (or biases) into :class:`DenseAttention`'s grouped ``qkv`` rows.

    For each key/value head ``g``: the rows of its ``n_head / n_kv_head`` query heads, then its k rows, then its
    v rows. With ``n_kv_head == n_head`` this is the head-major layout (:func:`qkv_head_major`).

    Args:
        q: ``(n_head * hs, ...)`` (Hugging Face's ``q_proj``).
        k: ``(n_kv_head * hs, ...)``.
        v: ``(n_kv_head * hs, ...)``.
        n_head: query heads.
        n_kv_head: key/value heads; divides ``n_head``.

    Returns:
        ``((n_head + 2 * n_kv_head) * hs, ...)``.

    Example:
        >>> qkv_grouped(torch.tensor([0.0, 1.0]), torch.tensor([2.0]), torch.tensor([3.0]), 2, 1).tolist()
        [0.0, 1.0, 2.0, 3.0]
        >>> qkv_grouped(torch.arange(2.0), torch.arange(2.0, 4), torch.arange(4.0, 6), 2, 2).tolist()
        [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
    """
    _check_heads(n_head, n_kv_head)
    rest = q.shape[1:]
    groups = (
        q.reshape(n_kv_head, -1, *rest),
        k.reshape(n_kv_head, -1, *rest),
        v.reshape(n_kv_head, -1, *rest),
    )
    return torch.cat(groups, dim=1).reshape(-1, *rest)


def qkv_split(
    t: torch.Tensor, n_head: int, n_kv_head: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`qkv_grouped`: a fused ``qkv`` weight or bias back to separate ``(q, k, v)``.

    Example:
        >>> [x.tolist() for x in qkv_split(torch.arange(4.0), n_head=2, n_kv_head=1)]
        [[0.0, 1.0], [2.0], [3.0]]
    """
    _check_heads(n_head, n_kv_head)
    r = n_head // n_kv_head
    if t.size(0) % (n_kv_head * (r + 2)):
        raise ValueError(
            f"first dimension {t.size(0)} does not divide by (n_head + 2 * n_kv_head) = {n_head + 2 * n_kv_head}"
        )
    rest = t.shape[1:]
    grouped = t.reshape(n_kv_head, r + 2, -1, *rest)  # (group, r query heads + k + v, hs, ...)
    q = grouped[:, :r].reshape(-1, *rest)
    return q, grouped[:, r].reshape(-1, *rest), grouped[:, r + 1].reshape(-1, *rest)


class DenseAttention(nn.Module):
    """Multi-head, grouped-query or multi-query self-attention with one fused QKV projection.

    The fused ``qkv`` weight is grouped by key/value head, as Megatron-LM's: for each of the ``n_kv_head``
    groups, the rows of its ``n_head / n_kv_head`` query heads, then its key rows, then its value rows
    (``head_dim`` rows each). With ``n_kv_head == n_head`` (the default) that is Megatron's head-major order
    (head, {q, k, v}, head_dim), not ``[q; k; v]`` stacked as in nanoGPT / Hugging Face GPT-2's ``c_attn``
    (:func:`qkv_head_major` converts such a weight; :func:`qkv_grouped` fuses separate q/k/v projections).
    Splitting the rows into equal contiguous parts hands each part whole groups, which is what tensor
    parallelism needs. Query head ``h`` reads key/value head ``h // (n_head / n_kv_head)``, as Hugging Face's
    ``repeat_kv`` does.

    Args:
        n_embd: model width C; must divide by ``n_head``.
        n_head: query heads.
        n_kv_head: key/value heads (grouped-query attention); None is ``n_head``, 1 is multi-query.
        head_dim: channels per head; None is ``n_embd // n_head``. Set apart, the attention works at width
            ``n_head * head_dim`` and ``proj`` maps it back to ``n_embd``.
        bias: biases in the QKV and output projections, unless ``qkv_bias`` / ``proj_bias`` say otherwise.
        qkv_bias: bias in the fused QKV projection (Qwen2 has one); None follows ``bias``.
        proj_bias: bias in the output projection; None follows ``bias``.
        causal: mask later keys (decoders); False attends both ways (MLM encoders).
        attn_dropout: dropout on the attention probabilities (training only).
        dropout: residual dropout after the output projection.
        rope: rotary embeddings on queries and keys (:class:`~kit.nn.layers.rotary.RopeConfig`); None: none.

    Raises:
        ValueError: if ``n_embd`` does not divide by ``n_head`` (without ``head_dim``) or ``n_kv_head`` does not
            divide ``n_head``.

    Example:
        >>> DenseAttention(32, 2)(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
        >>> DenseAttention(32, 4, n_kv_head=2, rope=RopeConfig()).qkv.out_features  # (4 + 2 * 2) * 8
        64
        >>> from kit.nn import GPTConfig
        >>> DenseAttention.from_config(GPTConfig.from_name("debug")).n_head
        2
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        n_kv_head: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        qkv_bias: bool | None = None,
        proj_bias: bool | None = None,
        causal: bool = True,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
        rope: RopeConfig | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None and n_embd % n_head:
            raise ValueError(
                f"n_embd={n_embd} is not divisible by n_head={n_head}; pick a head count dividing it or set head_dim"
            )
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        _check_heads(n_head, n_kv_head)
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_size = head_dim or n_embd // n_head
        self.causal = causal
        self.attn_dropout = attn_dropout
        self.rope = rope
        width = (n_head + 2 * n_kv_head) * self.head_size
        self.qkv = nn.Linear(n_embd, width, bias=bias if qkv_bias is None else qkv_bias)
        self.proj = nn.Linear(n_head * self.head_size, n_embd, bias=bias if proj_bias is None else proj_bias)
        self.resid_dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config: GPTConfig) -> DenseAttention:
        """The layer with ``config``'s width, heads, biases, causality, dropouts and rotary settings."""
        return cls(config.n_embd, config.n_head, **cls._common(config))

    @staticmethod
    def _common(config: GPTConfig) -> dict[str, object]:
        return {
            "n_kv_head": config.n_kv_head,
            "head_dim": config.head_dim,
            "bias": config.bias,
            "qkv_bias": config.qkv_bias,
            "proj_bias": config.proj_bias,
            "causal": config.causal,
            "attn_dropout": config.attn_dropout,
            "dropout": config.dropout,
            "rope": config.rope if config.position == "rope" else None,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        r = self.n_head // self.n_kv_head
        # grouped fused layout: output features are (group, r query heads | k | v, head_dim), so a plain row split
        # of the weight gives each tensor-parallel rank (kit.parallel.tensor) whole groups; -1 is n_kv_head, or
        # n_kv_head / tp on one rank
        qkv = self.qkv(x).view(B, T, -1, r + 2, self.head_size)
        if r == 1:  # multi-head: one query head per group
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))  # (B, nh, T, hs)
        else:
            q = qkv[:, :, :, :r].flatten(2, 3).transpose(1, 2)  # (B, nh, T, hs)
            k = qkv[:, :, :, r].transpose(1, 2)  # (B, n_kv, T, hs)
            v = qkv[:, :, :, r + 1].transpose(1, 2)
        if self.rope is not None:
            q, k = apply_rotary(q, k, self.rope.theta, self.rope.scaling)
        y = self._attend(q, k, v, self.attn_dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, nh * hs), or a 1 / tp share per rank
        return self.resid_dropout(self.proj(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        return dense_attention(q, k, v, causal=self.causal, dropout_p=dropout_p)

    def extra_repr(self) -> str:
        rope = f", rope_theta={self.rope.theta}" if self.rope is not None else ""
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}{rope}"


class SlidingWindowAttention(DenseAttention):
    """:class:`DenseAttention`'s projections (grouped-query, rotary and biases included) over
    :func:`sliding_window_attention`; with rotary and ``n_kv_head`` this is Mistral's attention.

    Args:
        n_embd: model width C; must divide by ``n_head``.
        n_head: attention heads.
        window: each query sees keys fewer than ``window`` positions away.
        global_positions: positions that see every key and are seen by every query.
        **kwargs: ``n_kv_head``, ``head_dim``, ``bias``, ``qkv_bias``, ``proj_bias``, ``causal``, ``attn_dropout``,
            ``dropout`` and ``rope``, as :class:`DenseAttention`.

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
        **kwargs: Any,
    ) -> None:
        super().__init__(n_embd, n_head, **kwargs)
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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"


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

"""Self-attention layers, chosen by ``GPTConfig.attention`` through :func:`get_attention`.

Each variant is a function over ``(B, nh, T, hs)`` heads plus a module that owns the projections and calls it
(timm's ``drop_path`` / ``DropPath`` split). A new variant is one function/module pair and one ``ATTENTION``
entry; ``tests/test_layers.py`` then runs it through the whole model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kit.models.layers._factory import resolve

if TYPE_CHECKING:
    from kit.models.gpt import GPTConfig

__all__ = ["ATTENTION", "DenseAttention", "dense_attention", "get_attention"]


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


class DenseAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection over :func:`dense_attention`.

    Args:
        config: reads ``n_embd``, ``n_head``, ``bias``, ``causal``, ``attn_dropout`` and ``dropout``
            (residual dropout after the output projection).

    Example:
        >>> from kit.models.gpt import GPTConfig
        >>> DenseAttention(GPTConfig.from_name("debug"))(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # chunk and -1 (not split(C) and n_head): under tensor parallelism (kit.parallel.tensor) this rank's
        # qkv output holds n_head / tp heads of each of q, k, v
        q, k, v = self.qkv(x).chunk(3, dim=2)
        q, k, v = (t.view(B, T, -1, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = dense_attention(
            q, k, v, causal=self.causal, dropout_p=self.attn_dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, C), or C / tp per rank
        return self.resid_dropout(self.proj(y))


ATTENTION: dict[str, type[nn.Module]] = {"dense": DenseAttention}


def get_attention(kind: str | type[nn.Module]) -> type[nn.Module]:
    """The attention class for ``GPTConfig.attention``: a name from ``ATTENTION`` or a class (returned as is).

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
        >>> get_attention("dense").__name__
        'DenseAttention'
    """
    return resolve(kind, ATTENTION, "attention")

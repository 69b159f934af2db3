"""Feed-forward layers, chosen by ``GPTConfig.ffn`` through :func:`get_ffn`.

``"mlp"`` is the dense GELU MLP; ``"moe"`` is the Switch Transformer mixture of experts
(:class:`kit.nn.layers.moe.SwitchMoE`). A new variant (a gated MLP, say) is one module taking the config, one ``FFN`` entry, and
nothing else; ``tests/test_layers.py`` then runs it through the whole model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.layers._factory import resolve
from kit.nn.layers.moe import SwitchMoE

if TYPE_CHECKING:
    from kit.nn import GPTConfig

__all__ = ["FFN", "MLP", "get_ffn"]


class MLP(nn.Module):
    """Position-wise ``proj(gelu(fc(x)))`` with hidden width ``mlp_ratio * n_embd``, then residual dropout.

    Args:
        config: reads ``n_embd``, ``mlp_ratio``, ``bias`` and ``dropout``.

    Example:
        >>> from kit.nn import GPTConfig
        >>> MLP(GPTConfig.from_name("debug"))(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, C) -> (B, T, hidden) -> (B, T, C)


FFN: dict[str, type[nn.Module]] = {"mlp": MLP, "moe": SwitchMoE}


def get_ffn(kind: str | type[nn.Module]) -> type[nn.Module]:
    """The feed-forward class for ``GPTConfig.ffn``: a name from ``FFN`` or a class (returned as is).

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
        >>> get_ffn("mlp").__name__
        'MLP'
    """
    return resolve(kind, FFN, "ffn")

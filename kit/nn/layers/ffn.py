"""Feed-forward layers, chosen by ``GPTConfig.ffn`` through :func:`get_ffn`.

``"mlp"`` is the dense MLP (GELU unless ``GPTConfig.activation`` names another); ``"moe"`` is the Switch
Transformer mixture of experts (:class:`kit.nn.layers.moe.SwitchMoE`). A new variant (a gated MLP, say) is one
module with explicit arguments and a ``from_config(config)`` classmethod, plus one ``FFN`` entry;
``tests/test_layers.py`` then runs it through the whole model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from kit.nn.layers._factory import resolve
from kit.nn.layers.activations import get_activation
from kit.nn.layers.moe import SwitchMoE

if TYPE_CHECKING:
    from kit.nn import GPTConfig

__all__ = ["FFN", "MLP", "get_ffn"]


class MLP(nn.Module):
    """Position-wise ``proj(activation(fc(x)))`` with hidden width ``hidden``, then residual dropout.

    Args:
        n_embd: input and output width C.
        hidden: hidden width (``mlp_ratio * n_embd`` in a ``GPTConfig``).
        bias: biases in both projections.
        dropout: residual dropout after the output projection.
        activation: a name in :data:`~kit.nn.layers.activations.ACTIVATIONS` (``"gelu"``, ``"relu"``...).

    Example:
        >>> MLP(32, 128, activation="relu")(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
        >>> from kit.nn import GPTConfig
        >>> MLP.from_config(GPTConfig.from_name("debug")).fc.out_features
        128
    """

    def __init__(
        self, n_embd: int, hidden: int, *, bias: bool = True, dropout: float = 0.0, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.activation = activation
        self.act = get_activation(activation)
        self.fc = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config: GPTConfig) -> MLP:
        """The MLP of width ``mlp_ratio * n_embd`` with ``config``'s bias, dropout and activation."""
        return cls(
            config.n_embd,
            config.mlp_ratio * config.n_embd,
            bias=config.bias,
            dropout=config.dropout,
            activation=config.activation,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))  # (B, T, C) -> (B, T, hidden) -> (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


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

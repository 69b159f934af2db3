"""Feed-forward layers, chosen by ``GPTConfig.ffn`` through :func:`get_ffn`.

``"mlp"`` is the dense MLP (GELU unless ``GPTConfig.activation`` names another); ``"swiglu"`` is the gated
feed-forward of Llama, Mistral and Qwen2 (:class:`SwiGLU`: SiLU gate with ``activation="silu"``, GeGLU with
``"gelu"``); ``"moe"`` is the Switch Transformer mixture of experts (:class:`kit.nn.layers.moe.SwitchMoE`). The
hidden width is ``GPTConfig.ffn_hidden`` (``mlp_hidden`` when set, else ``mlp_ratio * n_embd``). A new variant
is one module with explicit arguments and a ``from_config(config)`` classmethod, plus one ``FFN`` entry;
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

__all__ = ["FFN", "MLP", "SwiGLU", "get_ffn"]


class MLP(nn.Module):
    """Position-wise ``proj(activation(fc(x)))`` with hidden width ``hidden``, then residual dropout.

    Args:
        n_embd: input and output width C.
        hidden: hidden width (``GPTConfig.ffn_hidden``).
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
        """The MLP of width ``config.ffn_hidden`` with ``config``'s bias, dropout and activation."""
        return cls(
            config.n_embd,
            config.ffn_hidden,
            bias=config.bias if config.mlp_bias is None else config.mlp_bias,
            dropout=config.dropout,
            activation=config.activation,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))  # (B, T, C) -> (B, T, hidden) -> (B, T, C)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class SwiGLU(nn.Module):
    """Gated feed-forward ``proj(activation(gate(x)) * up(x))`` (Shazeer 2020), then residual dropout.

    The down projection is named ``proj``, as the MLP's, so the kit's residual-scaled initialisation and the
    tensor-parallel plan (``gate``/``up`` column-wise, ``proj`` row-wise) apply to it.

    Args:
        n_embd: input and output width C.
        hidden: hidden width (Llama-3-8B: 14336 for C = 4096).
        bias: biases in the three projections (Llama's ``mlp_bias``; usually False).
        dropout: residual dropout after the down projection.
        activation: the gate's activation, a name in :data:`~kit.nn.layers.activations.ACTIVATIONS`; ``"silu"``
            is SwiGLU, ``"gelu"`` GeGLU.

    Example:
        >>> SwiGLU(32, 64)(torch.randn(2, 4, 32)).shape
        torch.Size([2, 4, 32])
        >>> from kit.nn import GPTConfig
        >>> SwiGLU.from_config(GPTConfig.from_name("llama-debug")).gate.out_features
        96
    """

    def __init__(
        self, n_embd: int, hidden: int, *, bias: bool = False, dropout: float = 0.0, activation: str = "silu"
    ) -> None:
        super().__init__()
        self.activation = activation
        self.act = get_activation(activation)
        self.gate = nn.Linear(n_embd, hidden, bias=bias)
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config: GPTConfig) -> SwiGLU:
        """The gated feed-forward of width ``config.ffn_hidden`` with ``config``'s bias, dropout and activation."""
        return cls(
            config.n_embd,
            config.ffn_hidden,
            bias=config.bias if config.mlp_bias is None else config.mlp_bias,
            dropout=config.dropout,
            activation=config.activation,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) -> (B, T, h) -> (B, T, C)
        return self.dropout(self.proj(self.act(self.gate(x)) * self.up(x)))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


FFN: dict[str, type[nn.Module]] = {"mlp": MLP, "swiglu": SwiGLU, "moe": SwitchMoE}


def get_ffn(kind: str | type[nn.Module]) -> type[nn.Module]:
    """The feed-forward class for ``GPTConfig.ffn``: a name from ``FFN`` or a class (returned as is).

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
        >>> get_ffn("mlp").__name__
        'MLP'
    """
    return resolve(kind, FFN, "ffn")

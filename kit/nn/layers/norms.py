"""Normalisation layers, chosen by ``GPTConfig.norm`` through :func:`get_norm`.

| name | layer | used by |
| --- | --- | --- |
| ``"layernorm"`` | :class:`torch.nn.LayerNorm` (bias when ``GPTConfig.bias``) | GPT-2, BERT; the kit's default |
| ``"rmsnorm"`` | :class:`RMSNorm`: no mean, no bias | Llama, Mistral, Qwen2, SmolLM |

:class:`RMSNorm` computes in float32 and scales in the input's dtype, as Hugging Face's Llama does, so a model
loaded from a Hugging Face checkpoint gives the same numbers in half precision too. Register another with
``NORMS["mine"] = MyNorm`` (a class with ``from_config(config)``, or called as ``cls(config)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from kit.nn.layers._factory import build_layer, resolve

if TYPE_CHECKING:
    from kit.nn import GPTConfig

__all__ = ["NORMS", "LayerNorm", "RMSNorm", "build_norm", "get_norm"]


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019): ``weight * x / sqrt(mean(x^2) + eps)``.

    Args:
        n_embd: normalised width C.
        eps: added to the mean square before the square root.

    Example:
        >>> RMSNorm(4)(torch.tensor([[3.0, -3.0, 3.0, -3.0]])).round().tolist()
        [[1.0, -1.0, 1.0, -1.0]]
    """

    def __init__(self, n_embd: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))

    @classmethod
    def from_config(cls, config: GPTConfig) -> RMSNorm:
        """The norm of width ``n_embd`` with ``config.norm_eps``."""
        return cls(config.n_embd, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()  # the statistics in float32 whatever the input dtype
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` built from a ``GPTConfig`` (``bias`` and ``norm_eps``); same state-dict keys.

    Example:
        >>> from kit.nn import GPTConfig
        >>> LayerNorm.from_config(GPTConfig.from_name("debug")).eps
        1e-05
    """

    @classmethod
    def from_config(cls, config: GPTConfig) -> LayerNorm:
        """The norm of width ``n_embd`` with ``config.bias`` and ``config.norm_eps``."""
        return cls(config.n_embd, eps=config.norm_eps, bias=config.bias)


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def get_norm(kind: str | type[nn.Module]) -> type[nn.Module]:
    """The norm class for ``GPTConfig.norm``: a name from ``NORMS`` or a class (returned as is).

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
        >>> get_norm("rmsnorm").__name__
        'RMSNorm'
    """
    return resolve(kind, NORMS, "norm")


def build_norm(config: GPTConfig) -> nn.Module:
    """The ``config.norm`` layer for ``config`` (what ``Block`` and ``GPT`` use for every norm).

    Example:
        >>> from kit.nn import GPTConfig
        >>> type(build_norm(GPTConfig.from_name("llama-debug"))).__name__
        'RMSNorm'
    """
    return build_layer(get_norm(config.norm), config)

"""Activation functions by name (``GPTConfig.activation``), so a config stays plain strings.

| name | function |
| --- | --- |
| ``"gelu"`` | exact GELU (GPT-2 and BERT use it; the kit's default) |
| ``"gelu_tanh"`` | GELU's tanh approximation (GPT-2's original code) |
| ``"relu"`` | ReLU (the original Transformer) |
| ``"silu"`` | SiLU / swish |

Register another with ``ACTIVATIONS["mine"] = fn`` (``fn(tensor) -> tensor``), then ``activation="mine"``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "get_activation"]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function registered under ``name`` in ``ACTIVATIONS``.

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    Example:
        >>> get_activation("relu")(torch.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"activation={name!r} is not one of {sorted(ACTIVATIONS)}; pick one, or register yours first: "
            "kit.nn.layers.ACTIVATIONS['mine'] = fn"
        )
    return ACTIVATIONS[name]

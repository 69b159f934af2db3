"""Transformer layers chosen by name from ``GPTConfig`` (installed as ``kit.nn.layers``).

| family | config field | names |
| --- | --- | --- |
| attention | ``attention`` | ``ATTENTION``: ``"dense"``, ``"sliding_window"`` (Longformer window + global) |
| feed-forward | ``ffn`` | ``FFN``: ``"mlp"``, ``"moe"`` (Switch Transformer) |
| depth | ``depth`` | ``DEPTH``: ``"stack"``, ``"universal"`` (shared block + ACT halting) |

Layers that add to the loss (MoE balance and z-loss, the ACT ponder cost) do it through the auxiliary-loss
protocol in :mod:`kit.nn.aux` (:func:`add_aux_losses`).
"""

from kit.nn.aux import add_aux_losses, aux_outputs, clear_aux, record_aux
from kit.nn.layers.attention import (
    ATTENTION,
    DenseAttention,
    SlidingWindowAttention,
    dense_attention,
    get_attention,
    sliding_window_attention,
    sliding_window_mask,
)
from kit.nn.layers.depth import DEPTH, Stack, UniversalACT, adaptive_computation, get_depth
from kit.nn.layers.ffn import FFN, MLP, get_ffn
from kit.nn.layers.moe import SwitchMoE, load_balancing_loss, route_tokens, router_z_loss

__all__ = [
    "ATTENTION",
    "DEPTH",
    "FFN",
    "MLP",
    "DenseAttention",
    "SlidingWindowAttention",
    "Stack",
    "SwitchMoE",
    "UniversalACT",
    "adaptive_computation",
    "add_aux_losses",
    "aux_outputs",
    "clear_aux",
    "dense_attention",
    "get_attention",
    "get_depth",
    "get_ffn",
    "load_balancing_loss",
    "record_aux",
    "route_tokens",
    "router_z_loss",
    "sliding_window_attention",
    "sliding_window_mask",
]

"""Transformer layers chosen by name from ``GPTConfig`` (installed as ``kit.nn.layers``).

| family | config field | names | settings |
| --- | --- | --- | --- |
| attention | ``attention`` | ``ATTENTION``: ``"dense"``, ``"sliding_window"`` (Longformer window + global) | ``sliding``: :class:`SlidingWindowConfig`; ``n_kv_head`` (grouped-query) |
| feed-forward | ``ffn`` | ``FFN``: ``"mlp"``, ``"swiglu"`` (gated, Llama), ``"moe"`` (Switch Transformer) | ``moe``: :class:`MoEConfig`; width ``mlp_hidden`` |
| norm | ``norm`` | ``NORMS``: ``"layernorm"``, ``"rmsnorm"`` | ``norm_eps`` |
| positions | ``position`` | ``"learned"`` (an embedding), ``"rope"`` (rotary queries and keys, :mod:`kit.nn.layers.rotary`) | ``rope``: :class:`RopeConfig` |
| depth | ``depth`` | ``DEPTH``: ``"stack"``, ``"universal"`` (shared block + ACT halting) | ``universal``: :class:`UniversalConfig` |
| activation | ``activation`` | ``ACTIVATIONS``: ``"gelu"``, ``"gelu_tanh"``, ``"relu"``, ``"silu"`` | |

Every layer takes explicit constructor arguments, so it works in any ``nn.Module``
(``SwitchMoE(256, 1024, experts=8)``), and has a ``from_config(config)`` classmethod that reads them from a
``GPTConfig``; :func:`build_layer` builds a registry entry for a config (what ``Block`` does). To add a variant,
register a class that has ``from_config`` (a class without one is called as ``cls(config)``):
``FFN["mine"] = MyFFN`` then ``GPTConfig(ffn="mine")``.

Layers that add to the loss (MoE balance and z-loss, the ACT ponder cost) do it through the auxiliary-loss
protocol in :mod:`kit.nn.aux` (:func:`add_aux_losses`, which consumes what it collects, so any training loop
can call it once per step).
"""

from kit.nn.aux import add_aux_losses, aux_outputs, clear_aux, record_aux
from kit.nn.layers._factory import build_layer
from kit.nn.layers.activations import ACTIVATIONS, get_activation
from kit.nn.layers.attention import (
    ATTENTION,
    DenseAttention,
    SlidingWindowAttention,
    SlidingWindowConfig,
    dense_attention,
    get_attention,
    qkv_grouped,
    qkv_head_major,
    qkv_split,
    qkv_stacked,
    sliding_window_attention,
    sliding_window_mask,
)
from kit.nn.layers.depth import DEPTH, Stack, UniversalACT, UniversalConfig, adaptive_computation, get_depth
from kit.nn.layers.ffn import FFN, MLP, SwiGLU, get_ffn
from kit.nn.layers.moe import MoEConfig, SwitchMoE, load_balancing_loss, route_tokens, router_z_loss
from kit.nn.layers.norms import NORMS, LayerNorm, RMSNorm, build_norm, get_norm
from kit.nn.layers.rotary import RopeConfig, apply_rotary, rope_frequencies, rotate_half

__all__ = [
    "ACTIVATIONS",
    "ATTENTION",
    "DEPTH",
    "FFN",
    "MLP",
    "NORMS",
    "DenseAttention",
    "LayerNorm",
    "MoEConfig",
    "RMSNorm",
    "RopeConfig",
    "SlidingWindowAttention",
    "SlidingWindowConfig",
    "Stack",
    "SwiGLU",
    "SwitchMoE",
    "UniversalACT",
    "UniversalConfig",
    "adaptive_computation",
    "add_aux_losses",
    "apply_rotary",
    "aux_outputs",
    "build_layer",
    "build_norm",
    "clear_aux",
    "dense_attention",
    "get_activation",
    "get_attention",
    "get_depth",
    "get_ffn",
    "get_norm",
    "load_balancing_loss",
    "qkv_grouped",
    "qkv_head_major",
    "qkv_split",
    "qkv_stacked",
    "record_aux",
    "rope_frequencies",
    "rotate_half",
    "route_tokens",
    "router_z_loss",
    "sliding_window_attention",
    "sliding_window_mask",
]

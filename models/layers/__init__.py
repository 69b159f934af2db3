"""Transformer layers chosen by name from ``GPTConfig`` (installed as ``kit.models.layers``).

| family | config field | names |
| --- | --- | --- |
| attention | ``attention`` | ``ATTENTION``: ``"dense"`` |
| feed-forward | ``ffn`` | ``FFN``: ``"mlp"`` |
"""

from kit.models.layers.attention import ATTENTION, DenseAttention, dense_attention, get_attention
from kit.models.layers.ffn import FFN, MLP, get_ffn

__all__ = ["ATTENTION", "FFN", "MLP", "DenseAttention", "dense_attention", "get_attention", "get_ffn"]

"""kit.nn.layers: every registered attention and feed-forward variant, run through the whole model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kit.nn import GPT, GPTConfig
from kit.nn.layers import (
    ATTENTION,
    DEPTH,
    FFN,
    DenseAttention,
    dense_attention,
    get_attention,
    get_ffn,
)

CHOICES = (
    [("attention", name) for name in ATTENTION]
    + [("ffn", name) for name in FFN]
    + [("depth", name) for name in DEPTH]
)
# settings that make each variant do something at T=12 (a window shorter than the sequence, a global token,
# several experts with a capacity that drops, more than one recurrent step)
SETTINGS = {
    "sliding_window": {"sliding": {"window": 3, "global_positions": [0]}},
    "moe": {"moe": {"experts": 4, "capacity_factor": 1.0, "eval_capacity_factor": 1.0}},
    "universal": {"universal": {"max_steps": 3}},
}


@pytest.mark.parametrize(("field", "name"), CHOICES, ids=[f"{f}={n}" for f, n in CHOICES])
def test_every_registered_layer_trains_and_keeps_causality(field: str, name: str) -> None:
    torch.manual_seed(0)
    config = GPTConfig.from_name("debug", **{field: name}, **SETTINGS.get(name, {}))
    model = GPT(config)
    layer = {"attention": model.blocks[0].attn, "ffn": model.blocks[0].mlp, "depth": model.depth}[field]
    registry = {"attention": ATTENTION, "ffn": FFN, "depth": DEPTH}[field]
    assert isinstance(layer, registry[name])
    x = torch.randint(0, 64, (2, 12))
    logits = model(x)
    assert logits.shape == (2, 12, 64)
    F.cross_entropy(logits.view(-1, 64), x.view(-1)).backward()
    layer_params = list(model.blocks[0].parameters()) + list(layer.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer_params)
    # a causal model's outputs before the last position never see the last token
    model.eval()
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1) % 64
    assert torch.allclose(model(x)[:, :-1], model(y)[:, :-1], atol=1e-5)


def test_factories_take_a_name_or_a_class_and_list_the_names_on_error() -> None:
    assert get_attention("dense") is DenseAttention and get_attention(DenseAttention) is DenseAttention
    assert get_ffn("mlp") is FFN["mlp"] and get_ffn(nn.Identity) is nn.Identity
    with pytest.raises(ValueError, match=r"attention='sliding' is not one of \['dense', 'sliding_window'\]"):
        get_attention("sliding")
    with pytest.raises(ValueError, match=r"ffn='glu' is not one of \['mlp', 'moe'\]; set GPTConfig.ffn"):
        get_ffn("glu")
    with pytest.raises(ValueError, match="ffn=<class 'int'> is not one of"):
        get_ffn(int)


def test_config_rejects_unknown_or_unserialisable_layer_choices() -> None:
    with pytest.raises(ValueError, match=r"attention='flash' is not one of \['dense', 'sliding_window'\]"):
        GPTConfig(attention="flash")
    with pytest.raises(ValueError, match=r"ffn=.*must be a registered name.*layers\.FFN\['mine'\] = MyClass"):
        GPTConfig(ffn=nn.Identity)


def test_dense_attention_function_matches_explicit_softmax_and_the_module_uses_it() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4).unbind(0)  # (B, nh, T, hs) each
    scores = q @ k.transpose(-2, -1) / 2.0  # sqrt(hs) = 2
    future = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    causal = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    assert torch.allclose(dense_attention(q, k, v, causal=True), causal, atol=1e-5)
    assert torch.allclose(dense_attention(q, k, v, causal=False), scores.softmax(-1) @ v, atol=1e-5)
    # the module is projections around the function: bidirectional config -> future tokens matter
    attn = DenseAttention.from_config(GPTConfig.from_name("debug", causal=False)).eval()
    x = torch.randn(1, 6, 32)
    x2 = x.clone()
    x2[0, -1] += 1.0
    assert not torch.allclose(attn(x)[0, :-1], attn(x2)[0, :-1], atol=1e-6)

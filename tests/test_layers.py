"""kit.nn.layers: every registered attention and feed-forward variant, run through the whole model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kit.nn import GPT, GPTConfig
from kit.nn.layers import (
    ACTIVATIONS,
    ATTENTION,
    DEPTH,
    FFN,
    MLP,
    DenseAttention,
    SlidingWindowAttention,
    SwitchMoE,
    UniversalACT,
    build_layer,
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
    with pytest.raises(ValueError, match=r"ffn='glu' is not one of \['mlp', 'moe', 'swiglu'\]; set GPTConfig.ffn"):
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


# -- explicit arguments, from_config and the registry contract ---------------------------------------------------
def test_layers_take_explicit_arguments_and_from_config_reads_the_same_ones() -> None:
    cfg = GPTConfig.from_name("debug", bias=False, causal=False, attn_dropout=0.2, dropout=0.1)
    for built, explicit in (
        (
            DenseAttention.from_config(cfg),
            DenseAttention(32, 2, bias=False, causal=False, attn_dropout=0.2, dropout=0.1),
        ),
        (MLP.from_config(cfg), MLP(32, 128, bias=False, dropout=0.1)),
    ):
        assert str(built) == str(explicit)  # same submodules, shapes and settings
        assert built.state_dict().keys() == explicit.state_dict().keys()
    attn = DenseAttention.from_config(cfg)
    assert (attn.n_head, attn.causal, attn.attn_dropout) == (2, False, 0.2)  # what tensor parallelism reads
    sliding = SlidingWindowAttention.from_config(
        GPTConfig.from_name(
            "debug", attention="sliding_window", sliding={"window": 5, "global_positions": [0, 2]}
        )
    )
    assert (sliding.window, sliding.global_positions) == (5, (0, 2))
    moe = SwitchMoE.from_config(
        GPTConfig.from_name("debug", ffn="moe", moe={"experts": 3, "top_k": 2}, bias=False)
    )
    assert (moe.n_experts, moe.top_k, moe.b_fc, tuple(moe.w_fc.shape)) == (3, 2, None, (3, 32, 128))
    ut = UniversalACT.from_config(
        GPTConfig.from_name("debug", depth="universal", universal={"ponder_cost": 0.5})
    )
    assert (ut.max_steps, ut.tau, tuple(ut.pos_emb.shape)) == (2, 0.5, (16, 32))  # max_steps None: n_layer
    with pytest.raises(ValueError, match=r"moe\.experts=2, moe\.top_k=3"):
        SwitchMoE(8, 16, experts=2, top_k=3)
    with pytest.raises(ValueError, match=r"n_embd=30 is not divisible by n_head=4"):
        DenseAttention(30, 4)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_the_activation_is_a_name_from_the_registry_used_by_mlp_and_experts(name: str) -> None:
    torch.manual_seed(0)
    fn = {
        "gelu": F.gelu,
        "relu": F.relu,
        "silu": F.silu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    }
    mlp = MLP(8, 16, activation=name)
    x = torch.randn(2, 3, 8)
    assert torch.allclose(mlp(x), mlp.proj(fn[name](mlp.fc(x))))
    model = GPT(GPTConfig.from_name("debug", ffn="moe", activation=name))
    assert model.blocks[0].mlp.activation == name
    one = SwitchMoE(8, 16, experts=1, activation=name)
    with torch.no_grad():
        one.w_fc[0].copy_(mlp.fc.weight.t())
        one.b_fc[0].copy_(mlp.fc.bias)
        one.w_proj[0].copy_(mlp.proj.weight.t())
        one.b_proj[0].copy_(mlp.proj.bias)
    assert torch.allclose(one(x), mlp(x), atol=1e-6)


def test_an_unknown_activation_lists_the_registered_ones() -> None:
    with pytest.raises(
        ValueError, match=r"activation='swish' is not one of \['gelu', 'gelu_tanh', 'relu', 'silu'\]"
    ):
        GPTConfig(activation="swish")
    with pytest.raises(ValueError, match=r"activation='tanh' is not one of"):
        MLP(4, 8, activation="tanh")


class GatedFFN(nn.Module):
    """A user's feed-forward with explicit arguments and ``from_config``: the registry contract."""

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden)
        self.up = nn.Linear(n_embd, hidden)
        self.down = nn.Linear(hidden, n_embd)

    @classmethod
    def from_config(cls, config: GPTConfig) -> GatedFFN:
        return cls(config.n_embd, 2 * config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class ConfigOnlyAttention(DenseAttention):
    """A user's attention written against the whole config (no ``from_config``): built as ``cls(config)``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config.n_embd, config.n_head, causal=config.causal)


def test_a_registered_user_class_is_built_from_the_config(monkeypatch) -> None:
    monkeypatch.setitem(FFN, "gated", GatedFFN)
    monkeypatch.setitem(ATTENTION, "mine", ConfigOnlyAttention)
    cfg = GPTConfig.from_name("debug", ffn="gated", attention="mine")
    assert isinstance(build_layer(get_ffn("gated"), cfg), GatedFFN)
    model = GPT(cfg)
    block = model.blocks[0]
    assert isinstance(block.mlp, GatedFFN) and block.mlp.up.out_features == 64
    assert isinstance(block.attn, ConfigOnlyAttention)
    x = torch.randint(0, 64, (2, 12))
    F.cross_entropy(model(x).view(-1, 64), x.view(-1)).backward()
    assert block.mlp.gate.weight.grad.abs().sum() > 0

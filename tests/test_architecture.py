"""Architecture variants: sliding-window + global attention, Switch MoE, Universal Transformer + ACT,
the auxiliary-loss protocol, active-parameter FLOPs and selective activation checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kit.health.flops import moe_active_params
from kit.health.planner import TrainingPlan
from kit.models.gpt import CausalLM
from kit.nn import GPT, Block, GPTConfig
from kit.nn.layers import (
    MLP,
    SlidingWindowAttention,
    SwitchMoE,
    UniversalACT,
    adaptive_computation,
    add_aux_losses,
    aux_outputs,
    dense_attention,
    load_balancing_loss,
    route_tokens,
    router_z_loss,
    sliding_window_attention,
    sliding_window_mask,
)
from kit.nn.layers.moe import expert_capacity
from kit.nn.transforms import checkpoint_blocks


# -- sliding window + global attention ---------------------------------------------------------------------
def naive_window_attention(q, k, v, window, glob, causal):
    """Reference from the definition: explicit loops build the pattern, explicit softmax applies it."""
    T = q.size(-2)
    allowed = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            seen = abs(i - j) < window or i in glob or j in glob
            allowed[i, j] = seen and (j <= i or not causal)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 20),
    window=st.integers(1, 24),
    glob=st.lists(st.integers(0, 24), max_size=3),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sliding_window_matches_a_naive_masked_reference(T, window, glob, causal, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(3, 2, 2, T, 4, generator=g).unbind(0)  # (B, nh, T, hs)
    got = sliding_window_attention(q, k, v, window=window, global_positions=glob, causal=causal)
    assert torch.allclose(got, naive_window_attention(q, k, v, window, set(glob), causal), atol=1e-5)
    if window >= T:  # the window covers everything: dense attention, with or without global tokens
        assert torch.allclose(got, dense_attention(q, k, v, causal=causal), atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_flex_attention_path_gives_the_masked_sdpa_result(causal: bool) -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 40, 8).unbind(0)
    kw = {"window": 5, "global_positions": (0, 17), "causal": causal}
    flex = sliding_window_attention(q, k, v, backend="flex", **kw)  # eager FlexAttention (forward) on CPU
    assert torch.allclose(flex, sliding_window_attention(q, k, v, backend="sdpa", **kw), atol=1e-5)


def test_sliding_window_gradients_flow_inside_the_pattern_only() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 10, 4, requires_grad=True) for _ in range(3))
    out = sliding_window_attention(q, k, v, window=2, global_positions=(0,), causal=True)
    out[0, 0, 6].sum().backward()  # query 6 sees keys 5, 6 (window) and 0 (global)
    seen = k.grad[0, 0].abs().sum(-1) > 0
    assert seen.tolist() == [i in (0, 5, 6) for i in range(10)]
    assert torch.isfinite(q.grad).all() and q.grad[0, 0, 6].abs().sum() > 0
    assert (v.grad[0, 0].abs().sum(-1) > 0).tolist() == seen.tolist()


@pytest.mark.parametrize("causal", [True, False])
def test_global_tokens_see_everything_and_are_seen_by_everyone(causal: bool) -> None:
    T, window, glob = 12, 2, 4
    mask = sliding_window_mask(T, window, [glob], causal=causal)
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool)) if causal else torch.ones(T, T, dtype=torch.bool)
    assert torch.equal(mask[glob], allowed[glob]) and torch.equal(mask[:, glob], allowed[:, glob])
    # through the module: changing the global token changes every output it may reach, even far away
    cfg = GPTConfig.from_name(
        "debug",
        attention="sliding_window",
        sliding={"window": window, "global_positions": [glob]},
        causal=causal,
    )
    attn = SlidingWindowAttention.from_config(cfg).eval()
    x = torch.randn(1, T, 32)
    x2 = x.clone()
    x2[0, glob] += 1.0
    changed = (attn(x) - attn(x2)).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == allowed[:, glob].tolist()
    x3 = x.clone()
    x3[0, T - 1] += 1.0  # the last token reaches the global token only when attention is bidirectional
    assert bool((attn(x)[0, glob] - attn(x3)[0, glob]).abs().sum() > 1e-6) == (not causal)


def test_sliding_window_rejects_bad_settings() -> None:
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match="window=0 must be >= 1"):
        sliding_window_attention(q, q, q, window=0)
    with pytest.raises(ValueError, match="sliding.global_positions=\\[-1\\] must hold positions >= 0"):
        GPTConfig(sliding={"global_positions": [-1]})
    with pytest.raises(ValueError, match="sliding.window=0 must be >= 1"):
        SlidingWindowAttention(32, 2, window=0)


# -- Switch MoE ----------------------------------------------------------------------------------------------
def moe_config(moe: dict | None = None, **kw) -> GPTConfig:
    return GPTConfig.from_name("debug", ffn="moe", moe=moe or {}, **kw)


def test_load_balancing_and_z_loss_equal_a_hand_computation_on_fixed_routing() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 0.5]])
    r = route_tokens(logits, top_k=1, capacity=4)
    assert r.expert.flatten().tolist() == [0, 1, 0, 2]
    f = torch.tensor([2 / 4, 1 / 4, 1 / 4])  # fraction of tokens sent to each expert
    P = logits.softmax(-1).mean(0)  # mean router probability per expert
    assert torch.allclose(load_balancing_loss(r.probs, r.expert, alpha=0.01), 0.01 * 3 * (f * P).sum())
    z = torch.stack([torch.log(torch.exp(row).sum()) ** 2 for row in logits]).mean()
    assert torch.allclose(router_z_loss(logits, beta=1e-3), 1e-3 * z)
    # the layer records exactly these through the protocol
    moe = SwitchMoE.from_config(moe_config({"experts": 3, "capacity_factor": 0.0}, n_embd=4, n_head=1))
    x = torch.eye(4)[None]  # (1, 4, 4): token t's router logits are row t of router.weight.T
    with torch.no_grad():
        moe.router.weight.copy_(logits.t())
    moe(x)
    total, values = aux_outputs(moe)
    assert torch.allclose(values["moe/balance"], load_balancing_loss(r.probs, r.expert))
    assert torch.allclose(total, values["moe/balance"] + values["moe/z_loss"])
    assert values["moe/load/0"].item() == 0.5 and values["moe/dropped"].item() == 0.0


@settings(max_examples=30, deadline=None)
@given(
    N=st.integers(1, 40),
    E=st.integers(1, 6),
    k=st.integers(1, 3),
    cf=st.floats(0.1, 2.0),
    seed=st.integers(0, 2**16),
)
def test_capacity_is_respected_and_first_choices_come_first(N, E, k, cf, seed) -> None:
    k = min(k, E)
    logits = torch.randn(N, E, generator=torch.Generator().manual_seed(seed))
    C = expert_capacity(N, E, k, cf)
    r = route_tokens(logits, k, C)
    kept = F.one_hot(r.expert[r.keep], E).sum(0)
    assert (kept <= C).all()
    for e in range(E):  # each expert fills slots 0..kept-1 exactly once, dropping only when full
        slots = r.slot[(r.expert == e) & r.keep]
        assert sorted(slots.tolist()) == list(range(int(kept[e])))
        assert kept[e] == min(C, int((r.expert == e).sum()))
    assert torch.allclose(r.gate.sum(-1), torch.ones(N)) or k == 1


def test_dropped_tokens_pass_through_and_every_routed_expert_gets_a_gradient() -> None:
    torch.manual_seed(0)
    moe = SwitchMoE.from_config(moe_config({"experts": 4, "capacity_factor": 0.5}))
    x = torch.randn(2, 8, 32)
    out = moe(x)
    routing = route_tokens(moe.router(x.transpose(0, 1).reshape(16, 32)), 1, expert_capacity(16, 4, 1, 0.5))
    dropped = ~routing.keep[:, 0]
    assert dropped.any()
    flat_out = out.transpose(0, 1).reshape(16, 32)
    assert (flat_out[dropped] == 0).all() and (flat_out[~dropped].abs().sum(-1) > 0).all()
    out.sum().backward()
    routed = set(routing.expert[routing.keep].tolist())
    for e in range(4):
        has_grad = bool(moe.w_fc.grad[e].abs().sum() > 0 and moe.w_proj.grad[e].abs().sum() > 0)
        assert has_grad == (e in routed), e
    assert moe.router.weight.grad.abs().sum() > 0  # the router learns through the gates


def test_top1_with_one_expert_equals_the_dense_mlp() -> None:
    torch.manual_seed(0)
    cfg = moe_config({"experts": 1})
    mlp, moe = MLP.from_config(cfg), SwitchMoE.from_config(cfg)
    with torch.no_grad():
        moe.w_fc[0].copy_(mlp.fc.weight.t())
        moe.b_fc[0].copy_(mlp.fc.bias)
        moe.w_proj[0].copy_(mlp.proj.weight.t())
        moe.b_proj[0].copy_(mlp.proj.bias)
    x = torch.randn(3, 5, 32)
    assert torch.allclose(moe(x), mlp(x), atol=1e-6)


def test_causal_lm_adds_and_logs_aux_losses_without_wiring() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig.from_name(
        "debug", ffn="moe", moe={"experts": 4}, depth="universal", universal={"max_steps": 2}
    )
    lm = CausalLM(cfg)
    logged = {}
    lm.log = lambda name, value, **kw: logged.__setitem__(name, value)
    batch = (torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
    total = lm.training_step(batch, 0)
    nll = logged["train/loss"]
    aux = logged["train/aux/moe/balance"] + logged["train/aux/moe/z_loss"] + logged["train/aux/act/ponder"]
    assert torch.allclose(total.detach(), nll + aux)
    assert {
        "train/aux/moe/dropped",
        "train/aux/moe/load/3",
        "train/aux/act/steps_mean",
        "train/aux/act/steps_max",
    } <= set(logged)
    # one shared block, two applications: the MoE stats are averaged over both, the losses summed
    assert math.isclose(sum(logged[f"train/aux/moe/load/{e}"].item() for e in range(4)), 1.0, rel_tol=1e-5)
    lm.model.eval()
    lm.model(batch[0])  # a new forward replaces the values: nothing accumulates across steps
    assert aux_outputs(lm.model)[1]["act/steps_max"] <= 2
    assert add_aux_losses(nn.Linear(2, 2), torch.tensor(1.0)) == 1.0  # no recording layer: loss unchanged


# -- Universal Transformer + ACT -----------------------------------------------------------------------------
def test_universal_with_one_step_is_one_block_application() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig.from_name("debug", depth="universal", universal={"max_steps": 1})
    model = GPT(cfg).eval()
    assert len(model.blocks) == 1 and isinstance(model.depth, UniversalACT)
    x = torch.randn(2, 6, 32)
    expected = model.blocks[0](x + model.depth.coordinates(6, 0))
    assert torch.allclose(model.depth(x, model.blocks), expected, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(max_steps=st.integers(1, 6), bias=st.floats(-8.0, 8.0), seed=st.integers(0, 2**16))
def test_halting_respects_the_maximum_and_weights_sum_to_one(max_steps, bias, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 3, generator=g)
    w = torch.randn(3, generator=g)
    out = adaptive_computation(
        x, lambda s, n: s * 0 + (n + 1), lambda s: torch.sigmoid(s @ w + bias), max_steps
    )
    assert (out.steps >= 1).all() and (out.steps <= max_steps).all()
    assert ((out.remainders > 0) & (out.remainders <= 1 + 1e-6)).all()
    # state n is the constant n + 1, so the output is the expected step index: it lies in [1, steps]
    mean_step = out.output[..., 0]
    assert (mean_step >= 1 - 1e-5).all() and (mean_step <= out.steps + 1e-5).all()
    if bias <= -8:  # halting probability ~0: every token runs to the maximum
        assert (out.steps == max_steps).all()


def test_ponder_cost_has_a_gradient_into_the_halting_unit() -> None:
    torch.manual_seed(0)
    model = GPT(
        GPTConfig.from_name("debug", depth="universal", universal={"max_steps": 4, "ponder_cost": 0.1})
    )
    model(torch.randint(0, 64, (2, 8)))
    total, values = aux_outputs(model)
    assert 1.0 <= values["act/steps_mean"] <= values["act/steps_max"] <= 4
    total.backward()
    assert model.depth.halt.grad.abs().sum() > 0 and model.depth.halt_bias.grad.abs() > 0


# -- FLOPs and the planner count active parameters ---------------------------------------------------------------
def test_flops_count_active_parameters_for_moe_and_applications_for_universal() -> None:
    dense = GPT(GPTConfig.from_name("debug"))
    moe = GPT(GPTConfig.from_name("debug", ffn="moe", moe={"experts": 4}))
    router = sum(b.mlp.router.weight.numel() for b in moe.blocks)
    assert moe.num_params() > 3 * dense.num_params() / 2  # 4x the MLP weights in total...
    assert moe.num_active_params() == dense.num_params() + router  # ...the dense count active (top-1)
    assert moe.flops_per_token(16) == pytest.approx(dense.flops_per_token(16) + 6 * router)
    expert = moe.blocks[0].mlp.expert_params()
    assert moe_active_params(1000 + expert, expert, 4, 1) == pytest.approx(1000 + expert / 4)
    ut = GPT(GPTConfig.from_name("debug", depth="universal", universal={"max_steps": 3}))
    block = sum(p.numel() for p in ut.blocks.parameters())
    assert ut.num_active_params() == ut.num_params() + 2 * block
    plan = TrainingPlan(params=8e9, active_params=2e9, tokens=1e11, n_layer=32, d_model=4096)
    assert plan.total_flops == pytest.approx(
        TrainingPlan(params=2e9, tokens=1e11, n_layer=32, d_model=4096).total_flops
    )


# -- selective activation checkpointing --------------------------------------------------------------------------
@pytest.mark.parametrize(("part", "every"), [("full", 2), ("attention", 1), ("ffn", 1)])
def test_selective_checkpointing_wraps_what_it_says_and_keeps_gradients(part: str, every: int) -> None:
    torch.manual_seed(0)
    cfg = GPTConfig.from_name("debug", n_layer=3, ffn="moe" if part == "ffn" else "mlp", moe={"experts": 2})
    plain, ckpt = GPT(cfg), GPT(cfg)
    ckpt.load_state_dict(plain.state_dict())
    checkpoint_blocks(ckpt, every=every, part=part)
    wrapped = [
        type(b).__name__ == "CheckpointWrapper"
        if part == "full"
        else type(getattr(b, {"attention": "attn", "ffn": "mlp"}[part])).__name__ == "CheckpointWrapper"
        for b in ckpt.blocks
    ]
    assert wrapped == [i % every == 0 for i in range(3)]
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    x = torch.randint(0, 64, (2, 16))
    for m in (plain, ckpt):
        out = m(x)
        aux = aux_outputs(m)[0]
        (out.sum() + (aux if aux is not None else 0.0)).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


@pytest.mark.slow
@pytest.mark.parametrize("part", ["full", "attention"])
def test_every_variant_compiles_with_checkpointing_and_gives_the_same_gradients(part: str) -> None:
    import torch._dynamo

    torch.manual_seed(0)
    cfg = GPTConfig.from_name(
        "debug",
        attention="sliding_window",
        sliding={"window": 4, "global_positions": [0]},
        ffn="moe",
        moe={"experts": 4, "top_k": 2},
        depth="universal",
        universal={"max_steps": 3},
    )
    plain, ckpt = GPT(cfg), GPT(cfg)
    ckpt.load_state_dict(plain.state_dict())
    checkpoint_blocks(ckpt, part=part)
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(ckpt, backend="aot_eager")
    x = torch.randint(0, 64, (2, 16))
    losses = []
    for run, owner in ((plain, plain), (compiled, ckpt)):
        out = run(x)
        total, _ = aux_outputs(owner)  # the aux losses recorded inside the compiled graph come back too
        losses.append(total.detach())
        (out.sum() + total).backward()
    # a checkpointed region that records aux losses (the MoE inside a full block) is a side effect dynamo's
    # checkpoint operator refuses: it breaks the graph there (still correct); anywhere else: one graph
    assert bool(torch._dynamo.utils.counters["graph_break"]) == (part == "full")
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_checkpointing_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="part='attention' needs a .attn submodule, which Linear lacks"):
        checkpoint_blocks(nn.Sequential(nn.Linear(2, 2)), blocks=(nn.Linear,), part="attention")
    with pytest.raises(ValueError, match="activation_checkpointing='mlp' is not one of"):
        GPTConfig(activation_checkpointing="mlp")
    assert isinstance(GPT(GPTConfig.from_name("debug")).blocks[0], Block)


# -- the recipes, end to end through the real CLI ----------------------------------------------------------------
RECIPE_LOGS = {
    "gpt-tiny-moe": {
        "train/aux/moe/balance",
        "train/aux/moe/z_loss",
        "train/aux/moe/dropped",
        "train/aux/moe/load/7",
    },
    "gpt-tiny-universal": {"train/aux/act/ponder", "train/aux/act/steps_mean", "train/aux/act/steps_max"},
    "gpt-tiny-sliding": set(),
}


@pytest.mark.parametrize(
    "recipe",
    [
        "gpt-tiny-moe",  # the one run by default (about 15 s): it exercises the aux-loss path end to end
        pytest.param("gpt-tiny-universal", marks=pytest.mark.slow),
        pytest.param("gpt-tiny-sliding", marks=pytest.mark.slow),
    ],
)
def test_recipe_trains_end_to_end_and_logs_its_aux_values(recipe: str, tmp_path) -> None:
    from test_cli import FAST, _metrics, kit

    # a window shorter than the test's 32-token blocks, so the sliding pattern is really sparse
    extra = ["--model.init_args.config.sliding.window=8"] if recipe == "gpt-tiny-sliding" else []
    out = kit(["fit", "--config", recipe, *FAST, *extra], tmp_path).stdout
    assert "kit fit finished" in out
    rows = _metrics(tmp_path / "runs")
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"val/loss", "train/loss"} | RECIPE_LOGS[recipe] <= logged
    last = tmp_path / f"runs/{recipe}/version_0/checkpoints/last.ckpt"  # KitCheckpoint: one folder per run
    ckpt = torch.load(last, weights_only=False)
    cfg = ckpt["hyper_parameters"]["config"]
    assert (cfg["attention"], cfg["ffn"], cfg["depth"]) == {
        "gpt-tiny-moe": ("dense", "moe", "stack"),
        "gpt-tiny-universal": ("dense", "mlp", "universal"),
        "gpt-tiny-sliding": ("sliding_window", "mlp", "stack"),
    }[recipe]
    assert CausalLM.load_from_checkpoint(last).model is not None

"""The modern decoder options of the kit's GPT: RMSNorm, rotary, SwiGLU, grouped-query attention, per-projection
biases, the Llama-family presets, and how they compose with sliding windows, activation checkpointing, pipeline
stages and the tensor-parallel layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from kit.nn import GPT, GPTConfig
from kit.nn.layers import (
    DenseAttention,
    RMSNorm,
    RopeConfig,
    SlidingWindowAttention,
    SwiGLU,
    apply_rotary,
    qkv_grouped,
    qkv_head_major,
    qkv_split,
    rope_frequencies,
    sliding_window_mask,
)
from kit.nn.transforms import checkpoint_blocks


def _reference_attention(
    layer: DenseAttention, x: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention written out from separate q/k/v weights, repeating each key/value head over its query heads."""
    B, T, _ = x.shape
    nh, nkv, hs = layer.n_head, layer.n_kv_head, layer.head_size
    bias = layer.qkv.bias if layer.qkv.bias is not None else torch.zeros(layer.qkv.out_features)
    (wq, wk, wv), (bq, bk, bv) = qkv_split(layer.qkv.weight, nh, nkv), qkv_split(bias, nh, nkv)
    q = (x @ wq.T + bq).view(B, T, nh, hs).transpose(1, 2)
    k = (x @ wk.T + bk).view(B, T, nkv, hs).transpose(1, 2)
    v = (x @ wv.T + bv).view(B, T, nkv, hs).transpose(1, 2)
    if layer.rope is not None:
        q, k = apply_rotary(q, k, layer.rope.theta, layer.rope.scaling)
    k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)
    allowed = torch.ones(T, T, dtype=torch.bool).tril() if mask is None else mask
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return layer.proj(y.transpose(1, 2).reshape(B, T, nh * hs))


# -- grouped-query attention ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n_head", "n_kv_head"), [(4, 4), (4, 2), (6, 3), (4, 1)])
def test_grouped_query_attention_matches_repeated_key_value_heads(n_head: int, n_kv_head: int) -> None:
    torch.manual_seed(0)
    layer = DenseAttention(24, n_head, n_kv_head=n_kv_head, qkv_bias=True, proj_bias=False).eval()
    with torch.no_grad():
        layer.qkv.bias.normal_()
    x = torch.randn(2, 7, 24)
    assert layer.qkv.out_features == (n_head + 2 * n_kv_head) * (24 // n_head)
    assert layer.proj.bias is None
    torch.testing.assert_close(layer(x), _reference_attention(layer, x), atol=1e-5, rtol=1e-5)


def test_grouped_layout_with_as_many_kv_heads_is_the_head_major_layout() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 12, 5).unbind(0)
    assert torch.equal(qkv_grouped(q, k, v, 3, 3), qkv_head_major(torch.cat([q, k, v]), 3))
    # the module: same keys, shapes and outputs as the multi-head default, seed for seed
    torch.manual_seed(1)
    old = DenseAttention(12, 3)
    torch.manual_seed(1)
    new = DenseAttention(12, 3, n_kv_head=3)
    assert {k: v.shape for k, v in old.state_dict().items()} == {
        k: v.shape for k, v in new.state_dict().items()
    }
    x = torch.randn(2, 5, 12)
    assert torch.equal(old(x), new(x))
    # and the head-major forward written out: rows (head, q|k|v, head_dim)
    qkv = old.qkv(x).view(2, 5, 3, 3, 4)
    qh, kh, vh = (t.transpose(1, 2) for t in qkv.unbind(3))
    y = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True).transpose(1, 2).reshape(2, 5, 12)
    torch.testing.assert_close(new(x), old.proj(y))


@given(
    st.sampled_from([(1, 1), (2, 1), (4, 2), (6, 2), (8, 8), (9, 3)]),
    st.integers(1, 4),
    st.integers(0, 2),
)
def test_qkv_split_inverts_qkv_grouped(heads: tuple[int, int], hs: int, extra: int) -> None:
    nh, nkv = heads
    rest = (3,) * extra
    q, k, v = torch.randn(nh * hs, *rest), torch.randn(nkv * hs, *rest), torch.randn(nkv * hs, *rest)
    back = qkv_split(qkv_grouped(q, k, v, nh, nkv), nh, nkv)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


def test_each_contiguous_tensor_parallel_shard_holds_whole_groups() -> None:
    """What the column-parallel plan does: split qkv rows and proj columns into tp parts; the partial outputs sum
    to the full layer, so every rank computes whole query groups with their own keys and values."""
    torch.manual_seed(0)
    full = DenseAttention(32, 8, n_kv_head=4, rope=RopeConfig(theta=500.0), bias=False).eval()
    x = torch.randn(2, 6, 32)
    tp = 2
    total = torch.zeros(2, 6, 32)
    for rank in range(tp):
        # the module as tensor parallelism leaves it: full head counts, local shards of the weights
        part = DenseAttention(32, 8, n_kv_head=4, rope=RopeConfig(theta=500.0), bias=False).eval()
        part.qkv = torch.nn.Linear(32, full.qkv.out_features // tp, bias=False)
        part.proj = torch.nn.Linear(32 // tp, 32, bias=False)
        with torch.no_grad():
            part.qkv.weight.copy_(full.qkv.weight.chunk(tp, dim=0)[rank])
            part.proj.weight.copy_(full.proj.weight.chunk(tp, dim=1)[rank])
        total += part(x)
    torch.testing.assert_close(total, full(x), atol=1e-5, rtol=1e-5)


# -- rotary, norms, SwiGLU --------------------------------------------------------------------------------------
def test_rotary_scores_depend_only_on_the_offset_and_keep_norms() -> None:
    torch.manual_seed(0)
    base_q, base_k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    q, k = apply_rotary(base_q.expand(1, 1, 10, 8), base_k.expand(1, 1, 10, 8), theta=100.0)
    scores = q[0, 0] @ k[0, 0].T  # (T, T)
    for offset in (0, 1, 3):
        diagonal = torch.diagonal(scores, offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q.norm(dim=-1), base_q.norm(dim=-1).expand(1, 1, 10), atol=1e-5, rtol=1e-5)


def test_llama3_scaling_keeps_high_frequencies_and_divides_low_ones() -> None:
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    plain, scaled = rope_frequencies(16, 500000.0), rope_frequencies(16, 500000.0, scaling)
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 16], plain[wavelen < 16])
    torch.testing.assert_close(scaled[wavelen > 64], plain[wavelen > 64] / 8.0)
    middle = (wavelen >= 16) & (wavelen <= 64)
    assert middle.any() and ((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 8)).all()


def test_rope_config_rejects_other_scalings_and_small_theta() -> None:
    with pytest.raises(ValueError, match="is not Llama-3 scaling.*missing"):
        RopeConfig(scaling={"factor": 2.0})
    with pytest.raises(ValueError, match="theta=1.0 must be > 1"):
        RopeConfig(theta=1.0)
    with pytest.raises(ValueError, match="even head size, but the head size is 3"):
        GPTConfig.from_name("llama-debug", n_embd=12, n_head=4, n_kv_head=None)


def test_rmsnorm_matches_torch_and_keeps_the_input_dtype() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (16,), norm.weight, eps=1e-6))
    assert norm.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_swiglu_gates_and_its_down_projection_gets_the_residual_init() -> None:
    torch.manual_seed(0)
    ffn = SwiGLU(8, 20, bias=False)
    x = torch.randn(4, 8)
    expected = ffn.proj(F.silu(ffn.gate(x)) * ffn.up(x))
    torch.testing.assert_close(ffn(x), expected)
    model = GPT(
        GPTConfig.from_name("llama-debug", n_layer=8, n_embd=256, n_head=4, n_kv_head=2, mlp_hidden=512)
    )
    std = model.blocks[0].mlp.proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.001  # scaled by 1/sqrt(2 n_layer), like the MLP's proj
    assert abs(model.blocks[0].mlp.gate.weight.std().item() - 0.02) < 0.001


# -- the model --------------------------------------------------------------------------------------------------
def test_default_config_keeps_the_gpt2_layout() -> None:
    cfg = GPTConfig.from_name("debug")
    assert (cfg.norm, cfg.position, cfg.ffn, cfg.n_kv_head, cfg.mlp_hidden) == (
        "layernorm",
        "learned",
        "mlp",
        None,
        None,
    )
    model = GPT(cfg)
    keys = set(model.state_dict())
    assert {"wpe.weight", "blocks.0.ln_1.bias", "blocks.0.attn.qkv.bias", "blocks.0.mlp.fc.weight"} <= keys
    assert model.blocks[0].attn.qkv.out_features == 3 * cfg.n_embd
    assert type(model.ln_f).__mro__[1] is torch.nn.LayerNorm


def test_llama_layout_has_no_position_embedding_and_an_untied_head() -> None:
    model = GPT(GPTConfig.from_name("llama-debug"))
    keys = set(model.state_dict())
    assert model.wpe is None and not any(k.startswith("wpe") for k in keys)
    assert not any(k.endswith("bias") for k in keys)
    assert model.lm_head.weight is not model.wte.weight
    assert {"blocks.0.mlp.gate.weight", "blocks.0.mlp.up.weight", "blocks.0.mlp.proj.weight"} <= keys
    assert model.num_params() == model.num_params(exclude_positions=False)
    tied = GPT(GPTConfig.from_name("llama-debug", tie_embeddings=True))
    assert tied.lm_head.weight is tied.wte.weight


def test_rotary_model_uses_positions() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-debug")).eval()
    idx = torch.tensor([[5, 6, 7, 5, 6, 7]])
    logits = model(idx)
    # the same token after the same previous token at another position: different logits
    assert not torch.allclose(logits[0, 1], logits[0, 4])


def test_per_projection_biases_follow_bias_unless_set() -> None:
    cfg = GPTConfig.from_name("llama-debug", qkv_bias=True)
    block = GPT(cfg).blocks[0]
    assert block.attn.qkv.bias is not None and block.attn.proj.bias is None and block.mlp.gate.bias is None
    block = GPT(GPTConfig.from_name("debug", mlp_bias=False)).blocks[0]
    assert block.attn.qkv.bias is not None and block.mlp.fc.bias is None


@pytest.mark.parametrize(
    ("name", "params"),
    [("smollm-135m", 134_515_008), ("llama3-8b", 8_030_261_248), ("llama3-70b", 70_553_706_496)],
)
def test_presets_have_the_published_sizes(name: str, params: int) -> None:
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name(name))
    assert model.num_params() == params


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"n_kv_head=3 does not divide n_head=4; pick one of \[1, 2, 4\]"):
        GPTConfig.from_name("llama-debug", n_kv_head=3)
    with pytest.raises(ValueError, match=r"norm='batchnorm' is not one of \['layernorm', 'rmsnorm'\]"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match=r"position='alibi' is not one of \['learned', 'rope'\]"):
        GPTConfig(position="alibi")
    with pytest.raises(ValueError, match="mlp_hidden=0 must be >= 1"):
        GPTConfig(mlp_hidden=0)


def test_config_round_trips_through_a_dict() -> None:
    from dataclasses import asdict

    cfg = GPTConfig.from_name(
        "llama-debug",
        rope={
            "theta": 5e5,
            "scaling": {
                "factor": 8,
                "low_freq_factor": 1,
                "high_freq_factor": 4,
                "original_max_position_embeddings": 16,
            },
        },
    )
    assert GPTConfig.from_dict(asdict(cfg)) == cfg


# -- composition ------------------------------------------------------------------------------------------------
def test_sliding_window_composes_with_rotary_and_grouped_query() -> None:
    torch.manual_seed(0)
    kw = {"n_kv_head": 2, "rope": RopeConfig(theta=1000.0), "bias": False}
    sliding = SlidingWindowAttention(32, 4, window=3, **kw).eval()
    dense = DenseAttention(32, 4, **kw).eval()
    dense.load_state_dict(sliding.state_dict())
    x = torch.randn(2, 9, 32)
    mask = sliding_window_mask(9, 3, causal=True)
    torch.testing.assert_close(sliding(x), _reference_attention(sliding, x, mask), atol=1e-5, rtol=1e-5)
    wide = SlidingWindowAttention(32, 4, window=9, **kw).eval()
    wide.load_state_dict(sliding.state_dict())
    torch.testing.assert_close(wide(x), dense(x), atol=1e-6, rtol=1e-6)
    model = GPT(GPTConfig.from_name("llama-debug", attention="sliding_window", sliding={"window": 4}))
    assert isinstance(model.blocks[0].attn, SlidingWindowAttention) and model.blocks[0].attn.rope is not None


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_sliding_window_backends_take_grouped_key_value_heads(backend: str) -> None:
    from kit.nn.layers import sliding_window_attention

    if backend == "flex":
        pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 24, 8), torch.randn(1, 2, 24, 8), torch.randn(1, 2, 24, 8)
    kw = {"window": 5, "global_positions": (0,), "causal": True}
    got = sliding_window_attention(q, k, v, backend=backend, **kw)  # flex: eager FlexAttention on CPU
    repeated = sliding_window_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), backend="sdpa", **kw
    )
    torch.testing.assert_close(got, repeated, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("part", ["full", "attention", "ffn"])
def test_activation_checkpointing_covers_the_new_layers(part: str) -> None:
    torch.manual_seed(0)
    plain = GPT(GPTConfig.from_name("llama-debug"))
    wrapped = GPT(GPTConfig.from_name("llama-debug"))
    wrapped.load_state_dict(plain.state_dict())
    checkpoint_blocks(wrapped, part=part)
    idx = torch.randint(0, 64, (2, 10))
    plain(idx).logsumexp(-1).mean().backward()
    wrapped(idx).logsumexp(-1).mean().backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in wrapped.named_parameters()}
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-5)


def test_pipeline_stages_of_a_rotary_model_chain_to_the_full_model() -> None:
    from kit.parallel.pipeline import GPTStage

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-debug", n_layer=3)).eval()
    idx = torch.randint(0, 64, (2, 8))
    x = idx
    for s in range(3):
        x = GPTStage(model, s, 3)(x)
    torch.testing.assert_close(x, model(idx))


def test_generate_greedy_runs_past_the_context_with_rotary() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-debug")).eval()
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 20, temperature=0)
    assert out.shape == (1, 23)


# -- kit plan ---------------------------------------------------------------------------------------------------
def test_kit_plan_takes_the_llama3_presets(capsys: pytest.CaptureFixture[str]) -> None:
    from kit.cli.commands.plan import main
    from kit.health.planner import preset_shape, suggest_layout

    assert main(["--model", "llama3-8b", "--tokens", "1e12", "--gpus", "64"]) == 0
    out = capsys.readouterr().out
    assert "suggested 3D layout on 64 GPUs" in out
    assert main(["--model", "llama3-70b", "--tokens", "1e12", "--gpus", "64"]) == 0
    assert main(["--model", "llama-4", "--tokens", "1e12"]) == 2
    assert "unknown config name 'llama-4'" in capsys.readouterr().err
    shape = preset_shape("llama3-70b")
    assert (shape["params"], shape["n_layer"], shape["d_model"], shape["n_kv_head"]) == (
        70_553_706_496,
        80,
        8192,
        8,
    )
    # tensor parallelism never splits a key/value head: with 2 of them, tp stops at 2
    layout = suggest_layout(70e9, 64, "h100-80gb", n_layer=80, d_model=8192, n_head=64, n_kv_head=2)
    assert layout.tp <= 2


# -- tensor parallelism -----------------------------------------------------------------------------------------
def test_tp_plan_covers_swiglu_and_refuses_a_tp_that_splits_kv_heads() -> None:
    from kit.parallel.tensor import check_tp_sizes, tp_plan

    cfg = GPTConfig.from_name("llama-debug")
    plan = {k: type(v).__name__ for k, v in tp_plan(GPT(cfg)).items()}
    assert (
        plan["blocks.0.attn.qkv"] == plan["blocks.0.mlp.gate"] == plan["blocks.0.mlp.up"] == "ColwiseParallel"
    )
    assert plan["blocks.0.attn.proj"] == plan["blocks.0.mlp.proj"] == "RowwiseParallel"
    assert "blocks.0.mlp.fc" not in plan and "wpe" not in plan
    check_tp_sizes(cfg, 2)
    with pytest.raises(ValueError, match=r"n_kv_head=2 does not divide by tensor_parallel_size=4.*\[1, 2\]"):
        check_tp_sizes(cfg, 4)
    with pytest.raises(ValueError, match=r"n_kv_head=1 does not divide by tensor_parallel_size=2"):
        check_tp_sizes(GPTConfig.from_name("llama-debug", n_kv_head=1), 2)
    with pytest.raises(ValueError, match="n_head=2 does not divide by tensor_parallel_size=4"):
        check_tp_sizes(GPTConfig.from_name("debug"), 4)


def _llama_tp_config() -> GPTConfig:
    return GPTConfig.from_name("llama-debug", rope={"theta": 500.0}, qkv_bias=True)


def _tp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from kit.parallel.tensor import parallelize

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tensor_parallel",))
    torch.manual_seed(0)
    model = parallelize(GPT(_llama_tp_config()), mesh, fsdp=False)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    logits = model(x)
    logits.logsumexp(-1).mean().backward()
    grads = {
        k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad)
        for k, p in model.named_parameters()
    }
    if rank == 0:
        torch.save({"logits": logits.detach(), "grads": grads}, out)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_tensor_parallel_llama_layout_matches_one_process(tmp_path) -> None:
    import torch.multiprocessing as mp
    from conftest import free_port

    out = str(tmp_path / "tp.pt")
    mp.spawn(_tp_worker, args=(2, free_port(), out), nprocs=2)
    result = torch.load(out)
    torch.manual_seed(0)
    model = GPT(_llama_tp_config())
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    logits = model(x)
    logits.logsumexp(-1).mean().backward()
    torch.testing.assert_close(result["logits"], logits.detach(), atol=1e-5, rtol=1e-4)
    for name, p in model.named_parameters():
        torch.testing.assert_close(result["grads"][name], p.grad, atol=1e-6, rtol=1e-4)


def test_head_dim_apart_from_the_width() -> None:
    torch.manual_seed(0)
    layer = DenseAttention(24, 4, n_kv_head=2, head_dim=10, rope=RopeConfig()).eval()
    assert (layer.qkv.out_features, layer.proj.in_features) == ((4 + 2 * 2) * 10, 40)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(layer(x), _reference_attention(layer, x), atol=1e-5, rtol=1e-5)
    cfg = GPTConfig.from_name(
        "llama-debug", n_embd=30, head_dim=8
    )  # 30 does not divide by 4 heads: fine here
    assert GPT(cfg)(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 64)
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4.*or set head_dim"):
        GPTConfig.from_name("llama-debug", n_embd=30)

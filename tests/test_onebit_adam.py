"""1-bit Adam (kit.parallel.onebit_adam), the two-phase compressed all-reduce at W=1, the wire-byte formulas,
and the ddp-1bit-adam preset through a Lightning Trainer (one process; W=2/4 are in test_wire_bytes.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import TinyRegressor, make_trainer, regression_loader
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import kit.parallel.strategies  # noqa: F401  (registers the presets)
from kit.parallel.compression import method_wire_bytes, wire_bytes
from kit.parallel.onebit_adam import OneBitAdam, OneBitAdamW
from kit.parallel.strategies import OneBitAdamStrategy
from kit.parallel.two_phase import (
    ErrorFeedback,
    SignCodec,
    TopKCodec,
    chunk_size,
    compressed_allreduce,
    group_count,
    scale_groups,
)


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 2))
    return a, copy.deepcopy(a)


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize(("cls", "ref"), [(OneBitAdam, torch.optim.Adam), (OneBitAdamW, torch.optim.AdamW)])
def test_without_compression_it_is_torch_adam_bit_for_bit(cls, ref) -> None:
    a, b = _pair()
    opt_a = cls(a.parameters(), lr=3e-2, betas=(0.8, 0.99), weight_decay=0.1, freeze_step=None)
    opt_b = ref(b.parameters(), lr=3e-2, betas=(0.8, 0.99), weight_decay=0.1, foreach=False)
    for i in range(25):
        _step(a, opt_a, i)
        _step(b, opt_b, i)
    assert not opt_a.compressing
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("compress", ["update", "momentum"])
def test_stage_switches_at_freeze_step(compress: str, per_tensor: bool) -> None:
    a, b = _pair()
    opt = OneBitAdamW(a.parameters(), lr=1e-2, freeze_step=4, compress=compress, per_tensor_scale=per_tensor)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=1e-2, foreach=False)
    flags = []
    for i in range(4):
        flags.append(opt.compressing)
        _step(a, opt, i)
        _step(b, ref, i)
    assert flags == [False] * 4 and opt.compressing and opt.feedback.worker is None
    for p, q in zip(a.parameters(), b.parameters(), strict=True):  # the warm-up is AdamW
        assert torch.equal(p, q)
    frozen = [opt.state[p]["exp_avg_sq"].clone() for p in a.parameters()]
    for i in range(4, 7):
        _step(a, opt, i)
    assert opt.feedback.worker is not None and opt.feedback.server is not None
    for p, v in zip(a.parameters(), frozen, strict=True):
        assert torch.equal(opt.state[p]["exp_avg_sq"], v)  # the variance stays frozen
    # what went through 1-bit compression has one magnitude per chunk (W=1: one chunk), or per tensor: the
    # paper's momentum, or the kit's default, the update m / (sqrt(v_hat) + eps)
    sent = [
        opt.state[p]["exp_avg"] / (1 if compress == "momentum" else opt._denom(p)) for p in a.parameters()
    ]
    for x in sent:
        assert torch.allclose(x.abs(), x.abs().reshape(-1)[0].expand_as(x), rtol=1e-5)
    magnitudes = {round(float(x.abs().reshape(-1)[0]), 6) for x in sent}
    assert len(magnitudes) == (len(sent) if per_tensor else 1)


def test_compress_none_is_frozen_variance_adam() -> None:
    """The ablation mode: after ``freeze_step`` the update is ``m_hat / (sqrt(v_hat frozen) + eps)`` exactly."""
    a, _ = _pair()
    opt = OneBitAdam(a.parameters(), lr=1e-2, freeze_step=3, compress="none")
    m = [torch.zeros_like(p) for p in a.parameters()]
    v = [torch.zeros_like(p) for p in a.parameters()]
    for i in range(6):
        before = [p.detach().clone() for p in a.parameters()]
        _step(a, opt, i)
        for j, p in enumerate(a.parameters()):
            g = p.grad
            m[j] = 0.9 * m[j] + 0.1 * g
            if i < 3:
                v[j] = 0.999 * v[j] + 0.001 * g * g
            denom = (v[j] / (1 - 0.999**3 if i >= 3 else 1 - 0.999 ** (i + 1))).sqrt() + 1e-8
            expected = before[j] - 1e-2 * m[j] / (1 - 0.9 ** (i + 1)) / denom
            assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-7), (i, j)
    assert opt.compressing and opt.feedback.worker is None  # nothing went through the 1-bit codec


def test_resume_mid_compression_continues_identically() -> None:
    a, b = _pair()
    opt_a = OneBitAdamW(a.parameters(), lr=1e-2, freeze_step=3)
    for i in range(6):
        _step(a, opt_a, i)
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(opt_a.state_dict())
    for i in range(6, 12):
        _step(a, opt_a, i)
    b.load_state_dict(saved_model)
    opt_b = OneBitAdamW(b.parameters(), lr=1e-2, freeze_step=3)
    opt_b.load_state_dict(saved_opt)
    assert opt_b.compressing and opt_b.steps == 6
    for i in range(6, 12):
        _step(b, opt_b, i)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(opt_a.feedback.worker, opt_b.feedback.worker)
    assert torch.equal(opt_a.feedback.server, opt_b.feedback.server)


def test_bad_settings_name_the_value() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="freeze_step=0"):
        OneBitAdam(params, freeze_step=0)
    with pytest.raises(ValueError, match="betas"):
        OneBitAdam(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="freeze_step=0"):
        OneBitAdamStrategy(freeze_step=0)
    with pytest.raises(ValueError, match="scale='rms'"):
        OneBitAdam(params, scale="rms")
    with pytest.raises(ValueError, match="compress='grad'"):
        OneBitAdamStrategy(compress="grad")


def test_deepspeed_configuration_compresses_the_momentum_with_an_l2_scale() -> None:
    """``compress="momentum", scale="l2"`` is DeepSpeed's former OnebitAdam: one scale ``||m||_2 / sqrt(n)``
    per chunk on the raw momentum. The strategy hands both to the optimizer it converts (YAML-settable)."""
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    opt = OneBitAdam(model.parameters(), lr=1e-2, freeze_step=1, compress="momentum", scale="l2")
    model(torch.randn(3, 6)).square().sum().backward()
    opt.step()  # warm-up: plain Adam
    model.zero_grad()
    model(torch.randn(3, 6)).square().sum().backward()
    momenta = [opt.state[p]["exp_avg"].clone().lerp_(p.grad, 0.1) for p in model.parameters()]
    opt.step()  # W = 1: the momentum goes through one 1-bit round trip (worker, then server compression)
    flat = torch.cat([m.reshape(-1) for m in momenta])
    rms = flat.norm() / math.sqrt(flat.numel())
    sent = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in model.parameters()])
    # the worker step sends sign(m) x rms; the server's re-compression of a constant-magnitude vector keeps it
    assert torch.allclose(sent.abs(), rms.expand_as(sent), rtol=1e-5)
    assert torch.equal(sent > 0, flat > 0)
    converted = OneBitAdamStrategy(freeze_step=5, compress="momentum", scale="l2")._convert(
        torch.optim.AdamW(model.parameters(), lr=1e-3)
    )
    assert (converted.compress, converted.codec.scale, converted.freeze_step) == ("momentum", "l2", 5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), steps=st.integers(1, 8), seed=st.integers(0, 10_000), kind=st.integers(0, 2))
def test_error_feedback_conserves_the_signal(n: int, steps: int, seed: int, kind: int) -> None:
    """sum(inputs) == sum(decoded outputs) + worker error + server error, whatever the inputs (W = 1)."""
    gen = torch.Generator().manual_seed(seed)
    codec = [TopKCodec(0.1), SignCodec(), SignCodec(block=16)][kind]
    ef, total_in, total_out = (
        ErrorFeedback(),
        torch.zeros(n, dtype=torch.float64),
        torch.zeros(n, dtype=torch.float64),
    )
    for _ in range(steps):
        x = torch.randn(n, generator=gen) * 10 ** torch.randint(-3, 3, (1,), generator=gen).item()
        total_in += x.double()
        total_out += compressed_allreduce(x, codec, ef).double()
    residual = (ef.worker + ef.server).double()[:n]
    assert torch.allclose(total_out + residual, total_in, atol=1e-4 * (1 + total_in.abs().max().item()))


@settings(max_examples=60, deadline=None)
@given(world=st.integers(2, 4096), per_worker=st.integers(1_000, 1_000_000))
def test_two_phase_cut_does_not_shrink_with_world(world: int, per_worker: int) -> None:
    n = world * per_worker
    dense = method_wire_bytes("dense", n, world)
    assert 1 - method_wire_bytes("1bit-2phase", n, world) / dense >= 0.96
    assert 1 - method_wire_bytes("topk-2phase", n, world, 0.01) / dense >= 0.97
    # the all-gather schemes lose their cut linearly in W: 1-bit breaks even at W = 64, top-1% at W = 100
    assert method_wire_bytes("1bit-allgather", n, world) / dense == pytest.approx(
        world / 64, abs=1 / per_worker
    )
    assert method_wire_bytes("topk-allgather", n, world, 0.01) / dense == pytest.approx(
        world / 100, abs=1 / per_worker
    )


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 200), min_size=1, max_size=8),
    world=st.integers(1, 6),
    block=st.one_of(st.none(), st.integers(1, 64)),
    split=st.booleans(),
)
def test_scale_groups_never_span_tensors_and_the_formula_counts_them(sizes, world, block, split) -> None:
    """Every scale group lies in one tensor (or the padding) and one block; group_count equals the layout's."""
    n = sum(sizes)
    segments = sizes if split else None
    chunk = chunk_size(n, world)
    ids, groups = scale_groups(n, world, chunk, segments, block)
    assert groups == group_count(n, world, chunk, segments, block)
    total = world * chunk
    spans = torch.tensor([*(sizes if split else [n]), total - n])  # the tensors, then the padding
    owner = torch.repeat_interleave(torch.arange(len(spans)), spans)
    offset = torch.repeat_interleave(torch.cumsum(spans, 0) - spans, spans)
    piece = (torch.arange(total) - offset) // (block or total)
    key = (owner * (total + 1) + piece).view(world, chunk)
    for row in range(world):
        assert int(ids[row].max()) + 1 == key[row].unique().numel()  # one group per (tensor, block) piece
        for g in range(int(ids[row].max()) + 1):
            assert key[row][ids[row] == g].unique().numel() == 1  # one tensor, one block
    assert ids[:, 0].eq(0).all() and (ids.diff(dim=1) >= 0).all()


def test_wire_formulas_and_chunks() -> None:
    assert wire_bytes("all_reduce", 100, 1) == 0.0  # one worker: nothing on the wire
    assert chunk_size(10, 4) == 8 and chunk_size(64, 4) == 16
    with pytest.raises(ValueError, match="collective='broadcast'"):
        wire_bytes("broadcast", 1, 2)
    with pytest.raises(ValueError, match="powersgd_payload"):
        method_wire_bytes("powersgd", 10, 2)


def _fit(tmp_path, max_steps: int, ckpt_path=None):
    model = TinyRegressor(lr=1e-2, optimizer="adamw")
    trainer = make_trainer(
        tmp_path, max_steps=max_steps, strategy=OneBitAdamStrategy(freeze_step=3), enable_checkpointing=True,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, regression_loader(n=8, batch_size=8), ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.distributed
def test_preset_converts_adamw_and_resumes_mid_compression(tmp_path) -> None:
    from lightning.pytorch.strategies import StrategyRegistry

    assert StrategyRegistry["ddp-1bit-adam"]["strategy"] is OneBitAdamStrategy
    full, full_model = _fit(tmp_path / "full", 10)
    opt = full.optimizers[0]
    assert isinstance(opt, OneBitAdamW) and opt.steps == 10 and opt.compressing
    assert full.strategy.comm_state.optimizer is opt and opt.stats is full.strategy.comm_stats
    first, _ = _fit(tmp_path / "a", 6)  # one batch per epoch: no data-loader position to restore
    ckpt = tmp_path / "mid.ckpt"
    first.save_checkpoint(ckpt)
    resumed, resumed_model = _fit(tmp_path / "b", 10, ckpt_path=str(ckpt))
    assert resumed.optimizers[0].steps == 10
    for p, q in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_two_phase_hook_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    from kit.parallel.comm_hooks import hook_state_dict, load_hook_state_dict, make_comm_hook

    state, _ = make_comm_hook("1bit")
    state.feedback[0] = ErrorFeedback(worker=torch.randn(16), server=torch.randn(8))
    state.stats.collective("all_gather", 10, world=4)
    torch.save(hook_state_dict(state), tmp_path / "s.pt")
    fresh, _ = make_comm_hook("1bit")
    load_hook_state_dict(fresh, torch.load(tmp_path / "s.pt", weights_only=True))
    assert torch.equal(fresh.feedback[0].worker, state.feedback[0].worker)
    assert torch.equal(fresh.feedback[0].server, state.feedback[0].server)
    assert fresh.stats.sent == 30.0
    with pytest.raises(ValueError, match="scheme='ring'"):
        make_comm_hook("1bit", scheme="ring")


def test_onebit_adamw_differs_only_in_its_decay() -> None:
    """OneBitAdamW takes OneBitAdam's arguments (one signature) and defaults to AdamW's decoupled 0.01."""
    import inspect

    params = list(nn.Linear(3, 2).parameters())
    assert inspect.signature(OneBitAdamW) == inspect.signature(OneBitAdam)
    assert OneBitAdam(params).defaults["weight_decay"] == torch.optim.Adam(params).defaults["weight_decay"] == 0
    assert OneBitAdamW(params).defaults["weight_decay"] == torch.optim.AdamW(params).defaults["weight_decay"]
    assert OneBitAdamW(params, weight_decay=0.0).defaults["weight_decay"] == 0.0
    opt = OneBitAdamW(params, lr=0.5, block=4, scale="l2", freeze_step=7)
    assert (opt.freeze_step, opt.codec.block, opt.codec.scale, opt.decoupled) == (7, 4, "l2", True)

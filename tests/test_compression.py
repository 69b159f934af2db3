"""Tests for kit.parallel.compression (pure) and the single-process parts of kit.parallel.comm_hooks / GradientCompression."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TinyRegressor, make_trainer, regression_loader
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kit.callbacks.compression import GradientCompression
from kit.parallel.comm_hooks import (
    CommStats,
    PowerSGDHookState,
    ResidualState,
    load_hook_state_dict,
    make_comm_hook,
    onebit_hook,
    topk_hook,
)
from kit.parallel.compression import (
    pack_bits,
    powersgd_bytes,
    sign_bytes,
    sign_compress,
    sign_decompress,
    topk_bytes,
    topk_compress,
    topk_count,
    topk_decompress,
    unpack_bits,
)

_grads = st.integers(1, 6).flatmap(
    lambda steps: st.integers(1, 40).flatmap(
        lambda n: st.lists(
            arrays("float64", (n,), elements=st.floats(-1e3, 1e3, allow_nan=False)),
            min_size=steps,
            max_size=steps,
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(grads=_grads, ratio=st.floats(0.01, 1.0))
def test_topk_error_feedback_conserves_the_sum(grads, ratio: float) -> None:
    residual, sent = None, torch.zeros(grads[0].shape[0], dtype=torch.float64)
    for g in grads:
        values, indices, residual = topk_compress(torch.from_numpy(g), ratio, residual)
        assert values.numel() == topk_count(g.shape[0], ratio)
        sent += topk_decompress(values, indices, g.shape[0])
    total = torch.from_numpy(sum(grads))
    assert torch.allclose(sent + residual, total, atol=1e-9 * (1 + total.abs().max()))


@settings(max_examples=60, deadline=None)
@given(grads=_grads, split=st.booleans())
def test_sign_error_feedback_conserves_the_sum(grads, split: bool) -> None:
    n = grads[0].shape[0]
    segments = [n // 2, n - n // 2] if split and n > 1 else None
    residual, sent = None, torch.zeros(n, dtype=torch.float64)
    for g in grads:
        packed, scales, residual = sign_compress(torch.from_numpy(g), residual, segments)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n / 8)
        sent += sign_decompress(packed, scales, n, torch.float64, segments)
    total = torch.from_numpy(sum(grads))
    assert torch.allclose(sent + residual, total, atol=1e-6 * (1 + total.abs().max()))


@settings(max_examples=40, deadline=None)
@given(bits=st.lists(st.booleans(), min_size=1, max_size=70))
def test_pack_unpack_roundtrip(bits: list[bool]) -> None:
    t = torch.tensor(bits)
    assert torch.equal(unpack_bits(pack_bits(t), len(bits)), t)


def test_topk_keeps_largest_and_validates() -> None:
    values, indices, residual = topk_compress(torch.tensor([0.1, -5.0, 2.0, 0.0]), ratio=0.5)
    assert sorted(values.tolist()) == [-5.0, 2.0]
    assert sorted(indices.tolist()) == [1, 2]
    assert residual.tolist() == pytest.approx([0.1, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="ratio=0"):
        topk_compress(torch.ones(3), 0)
    with pytest.raises(ValueError, match="residual has 2"):
        topk_compress(torch.ones(3), 0.5, torch.ones(2))
    with pytest.raises(ValueError, match="segments sum"):
        sign_compress(torch.ones(3), segments=[1, 1])


def test_sign_scale_is_mean_magnitude_per_segment() -> None:
    packed, scales, residual = sign_compress(torch.tensor([1.0, -3.0, 0.5, -0.5]), segments=[2, 2])
    assert unpack_bits(packed, 4).tolist() == [True, False, True, False]
    assert scales.tolist() == [2.0, 0.5]
    assert residual.tolist() == [-1.0, -1.0, 0.0, 0.0]


def test_byte_accounting() -> None:
    assert topk_bytes(10) == 80
    assert sign_bytes(17, n_scales=2) == 3 + 8
    # 1024x1024 at rank 4: (1024+1024)*4 floats; the 1-D bias stays dense; 8x8 at rank 4 is not worth it
    assert powersgd_bytes([(1024, 1024), (1024,), (8, 8)], rank=4) == ((2048 * 4) + 1024 + 64) * 4
    stats = CommStats()
    stats.add(10, 100)
    stats.add(10, 100)
    assert stats.ratio == 10.0 and stats.pop_step() == (20, 200) and stats.pop_step() == (0, 0)


def test_make_comm_hook_validates() -> None:
    state, hook = make_comm_hook("topk", topk_ratio=0.05)
    assert isinstance(state, ResidualState) and hook is topk_hook and state.ratio == 0.05
    assert make_comm_hook("1bit")[1] is onebit_hook
    assert isinstance(make_comm_hook("powersgd", powersgd_rank=2)[0], PowerSGDHookState)
    with pytest.raises(ValueError, match="hook='gzip' is not supported"):
        make_comm_hook("gzip")
    with pytest.raises(ValueError, match="start_iter=1"):
        make_comm_hook("powersgd", powersgd_start_iter=1)
    with pytest.raises(ValueError, match="hook='zip'"):
        GradientCompression(hook="zip")


def test_callback_warns_and_does_nothing_without_ddp() -> None:
    cb = GradientCompression(hook="topk")
    trainer = make_trainer(None, [cb], max_steps=2)
    with pytest.warns(UserWarning, match="not DDP"):
        trainer.fit(TinyRegressor(), regression_loader(n=16))
    assert cb.stats is None and "compression/ratio" not in trainer.callback_metrics


@pytest.mark.parametrize("hook", ["topk", "1bit", "powersgd", "fp16"])
def test_callback_state_carries_the_hook_state_across_a_resume(hook: str, tmp_path) -> None:
    state, _ = make_comm_hook(hook, topk_ratio=0.05, powersgd_rank=2, powersgd_start_iter=2)
    state.stats.add(100, 1000)
    if isinstance(state, ResidualState):
        state.iter, state.residuals = 7, {0: torch.randn(5), 1: torch.randn(3)}
    if isinstance(state, PowerSGDHookState):
        state.psgd.iter = 12
        state.psgd.error_dict = {0: torch.randn(6)}
        state.psgd.p_memory_dict = {0: torch.randn(4)}
        state.psgd.rng.randn(3)  # advance the RNG so a fresh one would differ
    cb = GradientCompression(hook=hook)
    cb._attach(state, torch.device("cpu"))
    path = tmp_path / "cb.pt"
    torch.save(cb.state_dict(), path)
    saved = torch.load(path, weights_only=True)  # what a checkpoint restore hands back

    resumed = GradientCompression(hook=hook)
    resumed.load_state_dict(saved)  # Lightning restores callbacks before DDP exists
    fresh, _ = make_comm_hook(hook, topk_ratio=0.05, powersgd_rank=2, powersgd_start_iter=2)
    resumed._attach(
        fresh, torch.device("cpu")
    )  # on_fit_start: the hook is built, then the saved state applied
    assert (fresh.stats.sent, fresh.stats.dense) == (100, 1000)
    if isinstance(state, ResidualState):
        assert fresh.iter == 7 and set(fresh.residuals) == {0, 1}
        assert torch.equal(fresh.residuals[0], state.residuals[0])
    if isinstance(state, PowerSGDHookState):
        assert fresh.psgd.iter == 12 and torch.equal(fresh.psgd.error_dict[0], state.psgd.error_dict[0])
        assert fresh.psgd.rng.randn() == state.psgd.rng.randn()
    assert GradientCompression(hook="topk").state_key != GradientCompression(hook="1bit").state_key
    with pytest.raises(ValueError, match="powersgd_rank=0"):
        GradientCompression(powersgd_rank=0)


@pytest.mark.parametrize("hook", ["topk", "powersgd"])
def test_restored_hook_state_moves_to_the_buckets_device(hook: str) -> None:
    # A checkpoint can hand residuals / PowerSGD memories back on another device than the gradients'
    # (the CPU, or the GPU they were saved from); the restore puts them where the buckets are.
    saved = {"sent": 1, "dense": 2, "iter": 3, "residuals": {0: torch.randn(4)}}
    saved.update(error_dict={0: torch.randn(4)}, p_memory_dict={0: torch.randn(2)}, q_memory_dict={})
    state, _ = make_comm_hook(hook, powersgd_start_iter=2)
    load_hook_state_dict(state, saved, device="meta")
    moved = state.residuals if isinstance(state, ResidualState) else state.psgd.error_dict
    assert moved[0].device.type == "meta"
    if isinstance(state, PowerSGDHookState):
        assert state.psgd.p_memory_dict[0].device.type == "meta" and state.psgd.iter == 3


@settings(max_examples=60, deadline=None)
@given(arrays("float32", st.integers(1, 6).map(lambda k: (8 * k,)), elements=st.floats(-1e3, 1e3, width=32)))
def test_two_phase_sign_scale_is_mean_magnitude_not_deepspeeds_l2(x) -> None:
    """The kit's 1-bit scale is ``mean |x|``; DeepSpeed's 1-bit Adam used ``||x||_2 / sqrt(n)`` (``scale="l2"``).

    ``mean |x|`` minimises ``||x - s sign(x)||_2`` over ``s``, so the default's decoded message is never
    further from the input than DeepSpeed's (equal only when all magnitudes are equal). README: 1-bit Adam,
    where it differs from the paper and DeepSpeed.
    """
    from kit.parallel.two_phase import SignCodec

    rows = torch.from_numpy(x).view(1, -1)
    decoded = {}
    for scale in ("mean", "l2"):
        codec = SignCodec(scale=scale)
        payload, residual = codec.encode(rows)
        decoded[scale] = codec.decode(payload, rows.shape[1])
        assert torch.allclose(rows - decoded[scale], residual, atol=1e-3)  # error feedback keeps the rest
    tol = 1e-5 * float(rows.norm()) + 1e-6
    assert torch.allclose(decoded["mean"].abs(), rows.abs().mean().expand_as(rows), rtol=1e-5, atol=tol)
    rms = rows.norm() / math.sqrt(rows.numel())
    assert torch.allclose(decoded["l2"].abs(), rms.expand_as(rows), rtol=1e-5, atol=tol)
    assert (rows - decoded["mean"]).norm() <= (rows - decoded["l2"]).norm() + tol
    with pytest.raises(ValueError, match="scale='max'"):
        SignCodec(scale="max")

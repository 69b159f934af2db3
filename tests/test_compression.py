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
    CommHookConfig,
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
        GradientCompression(CommHookConfig(hook="zip"))


def test_make_comm_hook_uses_every_setting_and_refuses_unknown_keywords() -> None:
    import inspect

    params = inspect.signature(make_comm_hook).parameters  # lists the settings, for help() and the benchmark
    assert {k: params[k].default for k in ("topk_ratio", "per_tensor_scale", "block")} == {
        "topk_ratio": 0.01, "per_tensor_scale": True, "block": 32,
    }  # fmt: skip
    state, _ = make_comm_hook("topk", ratio=0.05)  # the short spelling is taken, not swallowed
    assert state.ratio == 0.05
    config = CommHookConfig(
        hook="1bit", dense_start=3, scheme="allgather", per_tensor_scale=False, block=None
    )
    state, _ = make_comm_hook("1bit", config)
    assert (state.start_iter, state.scheme, state.per_tensor_scale, state.block) == (
        3,
        "allgather",
        False,
        None,
    )
    state, _ = make_comm_hook("1bit", config, block=8)  # keywords override the config
    assert state.block == 8 and state.scheme == "allgather"
    psgd = make_comm_hook("powersgd", powersgd_rank=3, powersgd_start_iter=5)[0].psgd
    assert (psgd.matrix_approximation_rank, psgd.start_powerSGD_iter) == (3, 5)
    with pytest.raises(TypeError, match="topk_ration.*topk_ratio, powersgd_rank"):
        make_comm_hook("topk", topk_ration=0.05)
    with pytest.raises(TypeError, match="unknown keyword"):
        make_comm_hook("topk", hook="1bit")
    with pytest.raises(TypeError, match="both ratio= and topk_ratio="):
        make_comm_hook("topk", ratio=0.05, topk_ratio=0.05)
    with pytest.raises(ValueError, match="config for hook='1bit'"):
        make_comm_hook("topk", config)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"hook": "lz4"}, "hook='lz4' is not supported; choose one of allreduce"),
        ({"topk_ratio": 0.0}, r"topk_ratio=0.0 must be in \(0, 1\]"),
        ({"topk_ratio": 1.5}, r"topk_ratio=1.5 must be in \(0, 1\]"),
        ({"powersgd_rank": 0}, "powersgd_rank=0 must be >= 1"),
        ({"powersgd_start_iter": 1}, "powersgd_start_iter=1 must be >= 2"),
        ({"dense_start": -1}, "dense_start=-1 must be >= 0"),
        ({"scheme": "ring"}, "scheme='ring' is not supported; choose one of 2phase, allgather"),
        ({"block": 0}, "block=0 must be >= 1"),
    ],
)
def test_comm_hook_config_checks_each_setting(setting: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CommHookConfig(**setting)
    assert CommHookConfig(topk_ratio=1.0, block=None).block is None  # the edges that are valid


def test_callback_warns_and_does_nothing_without_ddp() -> None:
    cb = GradientCompression(CommHookConfig(hook="topk"))
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
    cb = GradientCompression(CommHookConfig(hook=hook))
    cb._attach(state, torch.device("cpu"))
    path = tmp_path / "cb.pt"
    torch.save(cb.state_dict(), path)
    saved = torch.load(path, weights_only=True)  # what a checkpoint restore hands back

    resumed = GradientCompression(CommHookConfig(hook=hook))
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
    topk, onebit = (
        GradientCompression(CommHookConfig(hook="topk")),
        GradientCompression(CommHookConfig(hook="1bit")),
    )
    assert topk.state_key != onebit.state_key
    with pytest.raises(ValueError, match="powersgd_rank=0"):
        GradientCompression(CommHookConfig(powersgd_rank=0))


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


def test_yaml_builds_the_config_and_still_reads_the_flat_settings() -> None:
    """What LightningCLI does with a recipe's ``init_args``: the nested ``comm`` form, and the old flat one."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import Strategy

    parser = ArgumentParser()
    parser.add_argument("--callback", type=Callback)
    parser.add_argument("--strategy", type=Strategy)

    def build(init_args: dict) -> tuple:
        cfg = parser.parse_object(
            {
                "callback": {
                    "class_path": "kit.callbacks.compression.GradientCompression",
                    "init_args": init_args,
                },
                "strategy": {
                    "class_path": "kit.parallel.strategies.CompressedDDPStrategy",
                    "init_args": init_args,
                },
            }
        )
        built = parser.instantiate_classes(cfg)
        return cfg, built.callback.comm, built.strategy.comm

    cfg, *comms = build({"comm": {"hook": "topk", "topk_ratio": 0.05, "block": None}})
    assert comms == [CommHookConfig(hook="topk", topk_ratio=0.05, block=None)] * 2
    printed = yaml.safe_load(parser.dump(cfg, skip_none=False))  # as LightningCLI saves it: every setting
    assert printed["callback"]["init_args"]["comm"]["powersgd_start_iter"] == 10
    again = parser.instantiate_classes(parser.parse_object(printed))
    assert again.callback.comm == again.strategy.comm == comms[0]
    with pytest.warns(DeprecationWarning, match="comm=CommHookConfig"):
        _, *comms = build({"hook": "1bit", "scheme": "allgather"})
    assert comms == [CommHookConfig(hook="1bit", scheme="allgather")] * 2

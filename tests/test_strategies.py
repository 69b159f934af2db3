"""Tests for kit.parallel.strategies: presets registered in Lightning's StrategyRegistry and their configuration."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, StrategyRegistry
from torch import nn

import kit.parallel.strategies as ks
from kit._compat import ddp_comm_hook
from kit.nn import Block
from kit.parallel.comm_hooks import (
    CommHookConfig,
    CommStats,
    PowerSGDHookState,
    ResidualState,
    onebit_hook,
    topk_hook,
)


def test_every_preset_is_registered_beside_lightnings_own() -> None:
    for name in ks.PRESETS:
        assert name in StrategyRegistry, name
        assert StrategyRegistry[name]["description"]
    assert "ddp" in StrategyRegistry and "deepspeed_stage_3" in StrategyRegistry
    assert ks.register_presets() == list(ks.PRESETS)  # idempotent


@pytest.mark.parametrize(
    ("name", "hook", "state_cls", "fn"),
    [
        ("ddp-topk", "topk", ResidualState, topk_hook),
        ("ddp-1bit", "1bit", ResidualState, onebit_hook),
        ("ddp-powersgd", "powersgd", PowerSGDHookState, None),
        ("ddp-fp16", "fp16", None, None),
    ],
)
def test_ddp_presets_build_fresh_hook_state(name: str, hook: str, state_cls, fn) -> None:
    a, b = StrategyRegistry.get(name), StrategyRegistry.get(name)
    assert isinstance(a, ks.CompressedDDPStrategy) and isinstance(a, DDPStrategy)
    assert a.hook == hook and isinstance(a.comm_stats, CommStats)
    (state_a, hook_a), (state_b, _) = ddp_comm_hook(a), ddp_comm_hook(b)  # what Lightning's DDP will register
    assert state_a is a.comm_state and state_a is not state_b  # no state shared between two Trainers
    if state_cls is not None:
        assert isinstance(state_a, state_cls)
    if fn is not None:
        assert hook_a is fn


def test_trainer_resolves_preset_by_name() -> None:
    trainer = pl.Trainer(strategy="ddp-topk", accelerator="cpu", devices=2, logger=False)
    assert isinstance(trainer.strategy, ks.CompressedDDPStrategy) and trainer.strategy.hook == "topk"


def test_compressed_ddp_validates() -> None:
    with pytest.raises(ValueError, match="hook='lz4'"):
        ks.CompressedDDPStrategy(CommHookConfig(hook="lz4"))
    with pytest.raises(ValueError, match="ratio=2"):
        ks.CompressedDDPStrategy(CommHookConfig(hook="topk", topk_ratio=2))
    with pytest.raises(TypeError, match="not a CommHookConfig"):
        ks.CompressedDDPStrategy({"hook": "topk"})
    with pytest.warns(DeprecationWarning, match="hook='topk'"):  # the old positional hook
        assert ks.CompressedDDPStrategy("topk").comm == CommHookConfig(hook="topk")


def test_flat_settings_still_work_with_a_deprecation_warning() -> None:
    from kit.callbacks.compression import GradientCompression

    for cls in (ks.CompressedDDPStrategy, GradientCompression):
        with pytest.warns(DeprecationWarning, match=r"comm=CommHookConfig\(hook='1bit', block=None\)"):
            old = cls(hook="1bit", block=None)  # None is a value of block: whole tensor pieces
        assert old.comm == CommHookConfig(hook="1bit", block=None)
        with pytest.warns(DeprecationWarning, match="topk_ratio=0.05"):
            assert cls(hook="topk", topk_ratio=0.05).comm.topk_ratio == 0.05
        with pytest.raises(TypeError, match="not both"):
            cls(CommHookConfig(hook="topk"), topk_ratio=0.05)


def test_fsdp_zero3_preset() -> None:
    s = StrategyRegistry.get("fsdp-zero3")
    assert isinstance(s, ks.FSDPZero3Strategy) and isinstance(s, FSDPStrategy)
    assert s.block_classes == {Block}
    assert s.mixed_precision.param_dtype == torch.bfloat16 and s.mixed_precision.reduce_dtype == torch.float32
    assert s._state_dict_type == "sharded"
    assert s.sharding_strategy.name == "FULL_SHARD"
    assert s._activation_checkpointing_kwargs  # blocks are checkpointed
    wrap = s.kwargs["auto_wrap_policy"]
    assert type(wrap).__name__ == "ModuleWrapPolicy" and Block in wrap._module_classes


def test_fsdp_zero3_custom_blocks_and_errors() -> None:
    class MyLayer(nn.Module):
        pass

    s = ks.FSDPZero3Strategy(blocks=[MyLayer], param_dtype="trainer", activation_checkpointing=False)
    assert (
        s.block_classes == {MyLayer} and s.mixed_precision is None and not s._activation_checkpointing_kwargs
    )
    with pytest.raises(ValueError, match="param_dtype='int8'"):
        ks.FSDPZero3Strategy(param_dtype="int8")


def test_block_classes_by_object_or_path_and_never_silently_empty() -> None:
    assert ks.block_classes() == {Block}  # the kit's block, by object
    assert ks.block_classes([Block, "torch.nn.Linear"]) == {Block, nn.Linear}
    # a renamed or misspelt block used to be skipped, leaving a policy that wraps nothing
    with pytest.raises(ValueError, match=r"'kit.models.gpt.Blok' does not import .* full dotted path"):
        ks.block_classes(["kit.models.gpt.Blok"])
    with pytest.raises(ValueError, match="'no.such.Module' does not import"):
        ks.block_classes([nn.Linear, "no.such.Module"])
    with pytest.raises(ValueError, match="'torch.nn.functional.gelu' is not an nn.Module class"):
        ks.block_classes(["torch.nn.functional.gelu"])
    with pytest.raises(ValueError, match="blocks is empty"):
        ks.FSDPZero3Strategy(blocks=[])
    with pytest.raises(ValueError, match="does not import"):
        ks.FSDPZero3Strategy(blocks=["no.such.Block"])


def test_deepspeed_presets_registered() -> None:
    z3 = StrategyRegistry["deepspeed-zero3"]
    off = StrategyRegistry["deepspeed-zero3-offload"]
    assert z3["strategy"] is DeepSpeedStrategy and z3["init_params"] == {"stage": 3}
    assert off["init_params"] == {"stage": 3, "offload_optimizer": True, "offload_parameters": True}


def test_compressed_ddp_exposes_the_1bit_scale_layout() -> None:
    """YAML users can set where 1-bit's scales go (the defaults: per tensor, one per 32 entries)."""
    from kit.parallel.strategies import CompressedDDPStrategy

    default = CompressedDDPStrategy(CommHookConfig(hook="1bit"))
    assert default.comm_state.block == 32 and default.comm_state.per_tensor_scale
    whole = CompressedDDPStrategy(CommHookConfig(hook="1bit", block=None, per_tensor_scale=False))
    assert whole.comm_state.block is None and not whole.comm_state.per_tensor_scale
    with pytest.raises(ValueError, match="block=0 must be >= 1"):
        CompressedDDPStrategy(CommHookConfig(hook="1bit", block=0))
    from kit.callbacks.compression import GradientCompression

    cb = GradientCompression(CommHookConfig(hook="1bit", block=64, per_tensor_scale=False))
    assert cb.comm.block == 64 and not cb.comm.per_tensor_scale
    with pytest.raises(ValueError, match="block=0 must be >= 1"):
        GradientCompression(CommHookConfig(hook="1bit", block=0))

"""Tests for kit.precision.loss_scale (pure) and kit.callbacks.loss_scale.LossScaleMonitor (Lightning wrapper)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyRegressor, make_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.plugins.precision import MixedPrecision

from kit.callbacks.loss_scale import LossScaleMonitor, ScaledFP16Precision
from kit.precision.loss_scale import (
    LossScaleConfig,
    OverflowTracker,
    clamp_scale,
    make_grad_scaler,
    storm_diagnosis,
)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init_scale": 0}, "init_scale=0"),
        ({"growth_factor": 1.0}, "growth_factor=1.0"),
        ({"backoff_factor": 1.5}, "backoff_factor=1.5"),
        ({"growth_interval": 0}, "growth_interval=0"),
        ({"min_scale": 16, "max_scale": 8, "init_scale": 8}, "exceeds"),
        ({"min_scale": 8, "max_scale": 1024, "init_scale": 65536}, "outside"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LossScaleConfig(**kwargs)


def test_make_grad_scaler_and_clamp() -> None:
    scaler = make_grad_scaler(LossScaleConfig(init_scale=4096, growth_interval=3), "cpu")
    assert scaler.get_scale() == 4096 and scaler.get_growth_interval() == 3
    scaler.scale(torch.ones(()))  # materialises the scale tensor
    clamp_scale(scaler, 8, 1024)
    assert scaler.get_scale() == 1024


@settings(max_examples=50, deadline=None)
@given(events=st.lists(st.sampled_from(["ok", "overflow", "grow"]), max_size=60))
def test_tracker_counts_exactly_the_backoffs(events: list[str]) -> None:
    cfg = LossScaleConfig(init_scale=64, min_scale=8, max_scale=1024)
    tracker = OverflowTracker(max_consecutive_skips=10_000, floor=8, floor_patience=10_000, init_scale=64)
    scale, overflows, run, longest = 64.0, 0, 0, 0
    for e in events:
        raw = scale * {"ok": 1.0, "overflow": 0.5, "grow": 2.0}[e]
        scale = min(max(raw, cfg.min_scale), cfg.max_scale)
        status = tracker.update(raw, scale)
        overflows += e == "overflow"
        run = run + 1 if e == "overflow" else 0
        longest = max(longest, run)
        assert status.skipped == (e == "overflow")
        assert cfg.min_scale <= status.scale <= cfg.max_scale
    assert tracker.total_skips == overflows


def test_tracker_storms() -> None:
    t = OverflowTracker(max_consecutive_skips=3, init_scale=64)
    assert [t.update(s).storm for s in (32, 64, 32, 16, 8)] == [False, False, False, False, True]
    floor = OverflowTracker(max_consecutive_skips=100, floor=8, floor_patience=3, init_scale=8)
    statuses = [floor.update(4.0, 8.0) for _ in range(3)]  # overflow at the floor, clamped back each time
    assert [s.storm for s in statuses] == [False, False, True]
    assert "floor 8" in statuses[-1].reason
    msg = storm_diagnosis(statuses[-1], step=7, lr=3e-4)
    assert "bf16" in msg and "0.0001" in msg and "step 7" in msg
    clone = OverflowTracker()
    clone.load_state_dict(floor.state_dict())
    assert clone.total_skips == 3


class _Tiny(TinyRegressor):
    """The shared MLP regression; ``blow_up`` multiplies the loss so fp16 gradients overflow on chosen steps."""

    def __init__(self, blow_up: set[int] | None = None, always: bool = False) -> None:
        super().__init__(lr=0.01)
        self.blow_up, self.always = blow_up or set(), always

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.always or self.global_step in self.blow_up:
            loss = loss * 1e38  # finite in fp32, but the scaled fp16 backward overflows
        return loss


def _loader(n: int = 256):
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(1))
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8
    )


def _fit(model, callbacks, steps: int, fp16: bool = True, **kw) -> pl.Trainer:
    monitor = next((c for c in callbacks if isinstance(c, LossScaleMonitor)), LossScaleMonitor())
    plugins = kw.pop("plugins", None) or ([monitor.precision_plugin("cpu")] if fp16 else [])
    trainer = make_trainer(None, callbacks, max_steps=steps, plugins=plugins, **kw)
    trainer.fit(model, _loader())
    return trainer


def test_monitor_configures_scaler_bounds_and_counts_skips() -> None:
    cb = LossScaleMonitor(init_scale=256, growth_interval=1, min_scale=8, max_scale=1024)
    trainer = _fit(_Tiny(blow_up={6}), [cb], steps=10)
    scaler = trainer.precision_plugin.scaler
    assert scaler.get_growth_interval() == 1  # the plugin built from the monitor's settings
    assert scaler.get_scale() <= 1024  # grew every step but was clamped at max_scale
    assert cb.tracker.total_skips == 1
    assert trainer.callback_metrics["loss_scale/skipped_total"] == 1.0
    assert trainer.callback_metrics["loss_scale/scale"] <= 1024


def test_monitor_stops_on_storm_with_diagnosis() -> None:
    cb = LossScaleMonitor(init_scale=1024, min_scale=8, max_scale=1024, max_consecutive_skips=5)
    with pytest.warns(UserWarning, match="overflow storm"):
        trainer = _fit(_Tiny(always=True), [cb], steps=30)
    assert trainer.global_step < 30  # stopped early
    assert "bf16" in cb.diagnosis and "lower the learning rate" in cb.diagnosis
    with pytest.raises(RuntimeError, match="overflow storm"):
        _fit(_Tiny(always=True), [LossScaleMonitor(max_consecutive_skips=3, on_storm="raise")], steps=30)


def test_monitor_names_the_fix_when_the_scaler_is_not_configured_as_asked() -> None:
    plain = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))  # torch defaults
    _fit(_Tiny(), [LossScaleMonitor(min_scale=8, max_scale=2.0**16)], steps=1, fp16=False, plugins=[plain])
    cb = LossScaleMonitor(init_scale=1024, growth_interval=1, max_scale=1024)
    plain = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match=r"init_scale=1024 \(the Trainer's scaler has 65536.0\).*precision_plugin"):
        _fit(_Tiny(), [cb], steps=1, fp16=False, plugins=[plain])
    plugin = ScaledFP16Precision("cpu", init_scale=1024, growth_interval=1)
    assert plugin.scaler.get_scale() == 1024 and plugin.scaler.get_growth_interval() == 1


def test_monitor_is_a_noop_under_fp32_and_bf16() -> None:
    cb = LossScaleMonitor()
    with pytest.warns(UserWarning, match="no loss scaler"):
        trainer = _fit(_Tiny(), [cb], steps=2, fp16=False, precision="bf16-mixed")
    assert not cb.active and "loss_scale/scale" not in trainer.callback_metrics
    with pytest.raises(ValueError, match="on_storm"):
        LossScaleMonitor(on_storm="explode")


def test_scaled_fp16_plugin_and_monitor_from_a_cli_yaml(tmp_path) -> None:
    """The README's YAML: the plugin carries the scaler settings, the monitor checks and bounds them."""
    from lightning.pytorch.cli import LightningCLI

    path = tmp_path / "fp16.yaml"
    path.write_text(
        "trainer:\n"
        "  accelerator: cpu\n  logger: false\n  max_steps: 2\n  enable_checkpointing: false\n"
        "  plugins:\n    - class_path: kit.callbacks.loss_scale.ScaledFP16Precision\n"
        "      init_args: {device: cpu, init_scale: 1024}\n"
        "  callbacks:\n    - class_path: kit.callbacks.loss_scale.LossScaleMonitor\n"
        "      init_args: {init_scale: 1024, min_scale: 8, max_scale: 1024}\n"
    )
    cli = LightningCLI(_Tiny, args=["--config", str(path)], run=False, save_config_callback=None)
    cli.trainer.fit(cli.model, _loader())
    assert isinstance(cli.trainer.precision_plugin, ScaledFP16Precision)
    assert cli.trainer.callback_metrics["loss_scale/scale"] <= 1024

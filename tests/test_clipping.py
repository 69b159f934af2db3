"""Tests for kit.precision.clipping (pure) and kit.callbacks.clipping.GradientClipping (Lightning wrapper)."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyRegressor, make_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from kit.callbacks.clipping import GradientClipping, unscale_once
from kit.precision.clipping import (
    AutoClip,
    adaptive_clip_,
    clip_by_norm,
    clip_by_value,
    grad_norm,
    unitwise_norm,
)


def _params_with_grads(seed: int, scale: float = 1.0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (3,), (2, 2, 2)]
    out = []
    for s in shapes:
        p = nn.Parameter(torch.randn(s, generator=g))
        p.grad = torch.randn(s, generator=g) * scale
        out.append(p)
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), max_norm=st.floats(0.01, 10.0))
def test_clip_by_norm_matches_torch_exactly(seed: int, scale: float, max_norm: float) -> None:
    ours, ref = _params_with_grads(seed, scale), _params_with_grads(seed, scale)
    pre, post = clip_by_norm(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert torch.equal(pre, ref_norm)
    for a, b in zip(ours, ref):
        assert torch.equal(a.grad, b.grad)
    assert torch.allclose(post, grad_norm(ours), rtol=1e-5)
    assert float(post) <= max_norm * (1 + 1e-5)


def test_clip_by_value() -> None:
    ps = _params_with_grads(0, 10.0)
    pre, post = clip_by_value(ps, 0.5)
    assert all(p.grad.abs().max() <= 0.5 for p in ps)
    assert post < pre
    with pytest.raises(ValueError, match="clip_value=0"):
        clip_by_value(ps, 0)


def test_agc_matches_hand_computation() -> None:
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    w.grad = torch.tensor([[0.3, 0.4], [1.0, 0.0], [0.001, 0.0]])
    # row 0: ||w||=5 -> bound 0.05; ||g||=0.5 -> scaled to 0.05 * g/0.5
    # row 1: ||w||=0 -> floored to eps=1e-3 -> bound 1e-5; ||g||=1 -> scaled to 1e-5
    # row 2: ||w||=1 -> bound 0.01; ||g||=0.001 -> untouched
    expected = torch.tensor([[0.03, 0.04], [1e-5, 0.0], [0.001, 0.0]])
    adaptive_clip_([w], clip_factor=0.01, eps=1e-3)
    assert torch.allclose(w.grad, expected, atol=1e-8)


def test_agc_bias_uses_whole_tensor_norm() -> None:
    b = nn.Parameter(torch.tensor([3.0, 4.0]))
    b.grad = torch.tensor([1.0, 0.0])
    adaptive_clip_([b], clip_factor=0.1)
    assert torch.allclose(b.grad, torch.tensor([0.5, 0.0]))
    assert unitwise_norm(torch.ones(2, 3, 4)).shape == (2, 1, 1)


@settings(max_examples=25, deadline=None)
@given(norms=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=40), size=st.integers(1, 10))
def test_autoclip_history_is_bounded_and_percentile(norms: list[float], size: int) -> None:
    clip = AutoClip(percentile=10, history_size=size)
    for n in norms:
        thr = clip.observe(torch.tensor(n))
    recent = torch.tensor(norms[-size:])
    assert clip.history.numel() == size
    assert torch.allclose(thr, torch.quantile(recent, 0.1))


def test_autoclip_clips_to_threshold_and_resumes() -> None:
    clip = AutoClip(percentile=50, history_size=4)
    for n in (1.0, 2.0, 3.0):
        clip.observe(torch.tensor(n))
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([30.0, 40.0])  # norm 50; history -> [1,2,3,50], median 2.5
    pre, post, thr = clip([p])
    assert float(post) == pytest.approx(2.5, rel=1e-4)
    assert float(pre) == pytest.approx(50.0)
    assert float(thr) == pytest.approx(2.5)
    assert float(p.grad.norm()) == pytest.approx(2.5, rel=1e-4)
    clone = AutoClip(percentile=50, history_size=4)
    clone.load_state_dict(clip.state_dict())
    assert float(clone.observe(torch.tensor(1.0))) == float(copy.deepcopy(clip).observe(torch.tensor(1.0)))
    with pytest.raises(ValueError, match="history_size=3"):
        AutoClip(history_size=3).load_state_dict(clip.state_dict())


@pytest.mark.parametrize(
    "kwargs", [{"mode": "nope"}, {"max_norm": 0}, {"percentile": 0}, {"clip_factor": -1}]
)
def test_callback_validates(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        GradientClipping(**kwargs)


def _adamw_regressor(fused: bool = True, lr: float = 0.1) -> TinyRegressor:
    """The shared MLP regression with AdamW, fused (unscales inside step) or foreach."""
    return TinyRegressor(lr=lr, optimizer="adamw", fused=fused)


def _loader(n: int = 32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = x.sum(1, keepdim=True) * 5.0  # large targets -> large grads -> clipping is active
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _manual_reference(steps: int, max_norm: float) -> nn.Module:
    model = _adamw_regressor(fused=True)
    opt = model.configure_optimizers()
    it = iter(_loader())
    for _ in range(steps):
        loss = model.training_step(next(it), 0)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
    return model


def test_fused_adamw_fp32_matches_manual_clip_grad_norm() -> None:
    model = _adamw_regressor(fused=True)
    cb = GradientClipping(mode="norm", max_norm=0.5)
    make_trainer(None, [cb], max_steps=4).fit(model, _loader())
    ref = _manual_reference(4, 0.5)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert float(cb.last["grad_norm/pre_clip"]) > 0.5  # clipping was active
    assert float(cb.last["grad_norm/post_clip"]) == pytest.approx(0.5, rel=1e-4)


def test_lightning_refuses_fused_under_bf16_but_callback_works() -> None:
    with pytest.raises(RuntimeError, match="fused"):
        make_trainer(None, [], max_steps=4, precision="bf16-mixed", gradient_clip_val=1.0).fit(
            _adamw_regressor(fused=True), _loader()
        )
    cb = GradientClipping(mode="norm", max_norm=0.5)
    make_trainer(None, [cb], max_steps=4, precision="bf16-mixed").fit(_adamw_regressor(fused=True), _loader())
    assert float(cb.last["grad_norm/post_clip"]) <= 0.5 * (1 + 1e-4)


class _Probe(pl.Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.norms.append(float(grad_norm(pl_module.parameters())))


@pytest.mark.parametrize("fused", [True, False])
def test_fp16_clips_unscaled_gradients_once(fused: bool) -> None:
    scale = 1024.0
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10_000)
    before, after = _Probe(), _Probe()
    cb = GradientClipping(mode="norm", max_norm=0.5)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    model = _adamw_regressor(fused=fused)
    make_trainer(None, [before, cb, after], max_steps=1, plugins=[plugin]).fit(model, _loader())
    pre = float(cb.last["grad_norm/pre_clip"])
    # fused: Lightning leaves the grads scaled and the callback unscales; else Lightning already unscaled.
    expected = before.norms[0] / scale if fused else before.norms[0]
    assert pre == pytest.approx(expected, rel=1e-4)
    assert 1.0 < pre < 1e3  # a real, unscaled norm (scaled would be ~1024x larger)
    # a callback after the clipper still sees the unclipped (unscaled) gradients: clipping runs at step time
    assert after.norms[0] == pytest.approx(pre, rel=1e-4)
    assert float(grad_norm(model.parameters())) == pytest.approx(0.5, rel=1e-3)  # what the optimizer used


def test_unscale_once_is_idempotent() -> None:
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(p.sum()).backward()
    assert unscale_once(scaler, opt) is True
    assert unscale_once(scaler, opt) is False
    assert torch.equal(p.grad, torch.ones(2))
    assert unscale_once(None, opt) is False


@pytest.mark.parametrize("mode", ["value", "autoclip", "agc"])
def test_other_modes_through_trainer(mode: str) -> None:
    cb = GradientClipping(mode=mode, clip_value=0.01, percentile=10, agc_exclude=("net.2",))
    model = _adamw_regressor(fused=True)
    make_trainer(None, [cb], max_steps=3).fit(model, _loader())
    pre, post = float(cb.last["grad_norm/pre_clip"]), float(cb.last["grad_norm/post_clip"])
    assert post < pre
    if mode == "autoclip":
        assert cb.autoclip.count == 3
        assert set(cb.state_dict()) == {"autoclip"}

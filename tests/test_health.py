"""GradientHealth: pure math (norms, sketch, band, update ratio) and the callback on a plain LightningModule."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyRegressor, make_trainer
from hypothesis import given
from hypothesis import strategies as st
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from kit.callbacks.gradient_health import GradientHealth
from kit.health.grads import (
    BandTracker,
    GradientSketch,
    cosine_similarity,
    flat_grads,
    grad_norms,
    group_by_layer,
    update_to_weight_ratios,
)


class Plain(TinyRegressor):
    """The shared MLP regression, recording the gradient norm it sees itself, for comparison."""

    def __init__(
        self, lr: float = 0.05, loss_scale: float = 1.0, fused: bool = False, adam: bool = False
    ) -> None:
        super().__init__(lr=lr, optimizer="adam" if adam else "sgd", fused=fused, loss_scale=loss_scale)
        self.seen_norms: dict[int, float] = {}

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.seen_norms[self.trainer.global_step] = float(
            torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        )


def loader(n: int = 256, batch: int = 16) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x[:, :1] * 2 + 0.1 * torch.randn(n, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def fit(module: pl.LightningModule, callbacks: list, steps: int = 20, **kw) -> pl.Trainer:
    trainer = make_trainer(None, callbacks, max_steps=steps, **kw)
    trainer.fit(module, loader())
    return trainer


# -- pure functions ------------------------------------------------------------------------------------


def test_group_by_layer_default_and_depth() -> None:
    names = ["blocks.0.attn.w", "blocks.0.attn.b", "blocks.1.mlp.w", "head"]
    assert group_by_layer(names) == {"blocks.0.attn": names[:2], "blocks.1.mlp": [names[2]], "head": ["head"]}
    assert list(group_by_layer(names, depth=2)) == ["blocks.0", "blocks.1", "head"]
    with pytest.raises(ValueError, match="depth=0"):
        group_by_layer(names, depth=0)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.floats(0.5, 4.0))
def test_grad_norms_match_flat_norm(sizes: list[int], scale: float) -> None:
    g = torch.Generator().manual_seed(sum(sizes))
    params = {}
    for i, n in enumerate(sizes):
        p = nn.Parameter(torch.zeros(n))
        p.grad = torch.randn(n, generator=g)
        params[f"l{i % 2}.p{i}"] = p
    total, per = grad_norms(params, group_by_layer(params), scale=scale)
    flat = flat_grads(params.values())
    assert torch.allclose(total, flat.norm() / scale, rtol=1e-5)
    # per-layer norms combine back into the global norm
    assert torch.allclose(torch.stack(list(per.values())).norm(), total, rtol=1e-5)


def test_sketch_exact_for_small_and_linear_for_large() -> None:
    small = [torch.randn(5), torch.randn(3)]
    assert torch.equal(GradientSketch(dim=16).project(small), torch.cat(small))
    sk = GradientSketch(dim=512, chunk=1000)  # several chunks per tensor
    g = torch.Generator().manual_seed(1)
    a, b = [torch.randn(3000, generator=g)], [torch.randn(3000, generator=g)]
    pa, pb, pab = sk.project(a), sk.project(b), sk.project([a[0] - b[0]])
    assert pa.shape == (512,)
    assert torch.allclose(pa - pb, pab, atol=1e-4)
    assert torch.equal(GradientSketch(dim=512, chunk=1000).project(a), pa)  # regenerated from the seed
    assert not torch.allclose(GradientSketch(dim=512, chunk=1000, seed=1).project(a), pa)


@given(st.floats(-0.95, 0.95))
def test_sketch_preserves_cosine(target: float) -> None:
    g = torch.Generator().manual_seed(7)
    n = 20_000
    a = torch.randn(n, generator=g)
    noise = torch.randn(n, generator=g)
    noise -= noise @ a / (a @ a) * a  # orthogonal to a
    b = target * a / a.norm() + (1 - target**2) ** 0.5 * noise / noise.norm()
    sk = GradientSketch(dim=8192)
    est = cosine_similarity(sk.project([a]), sk.project([b]))
    assert abs(float(est) - target) < 0.05  # error ~ 1/sqrt(8192) ~ 0.011


def test_update_to_weight_ratio() -> None:
    before = {"a": torch.ones(10), "b": torch.full((5,), 2.0)}
    after = {"a": torch.ones(10) * 1.001, "b": torch.full((5,), 2.0)}
    r = update_to_weight_ratios(before, after)
    assert float(r["a"]) == pytest.approx(1e-3, rel=1e-4) and float(r["b"]) == 0.0
    grouped = update_to_weight_ratios(before, after, {"layer": ["a", "b"]})
    assert float(grouped["layer"]) == pytest.approx(0.001 * 10**0.5 / (10 + 20) ** 0.5, rel=1e-3)


@given(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=60))
def test_band_tracker_counts_longest_run(values: list[float]) -> None:
    bt = BandTracker(0.5, 2.0)
    run = best = 0
    for v in values:
        bt.update(torch.tensor(v))
        run = run + 1 if (v < 0.5 or v > 2.0) else 0
        best = max(best, run)
    assert int(bt.worst_run()) == best
    with pytest.raises(ValueError, match="low < high"):
        BandTracker(2.0, 1.0)


# -- the callback on a plain module ------------------------------------------------------------------


def test_callback_matches_module_view_and_logs_all_metrics() -> None:
    cb = GradientHealth(log_every_n_steps=5)
    module = Plain()
    fit(module, [cb], steps=20, accumulate_grad_batches=2)
    m = cb.last_metrics
    for key in ("grad_norm", "cosine_prev_step", "cosine_microbatch", "out_of_band_run"):
        assert f"grad_health/{key}" in m
    assert any(k.startswith("grad_health/layer_norm/net.0") for k in m)
    assert any(k.startswith("grad_health/update_ratio/net.2") for k in m)
    # the last log step is 15: the callback's norm equals what the module saw at that step
    assert m["grad_health/grad_norm"] == pytest.approx(module.seen_norms[15], rel=1e-5)
    assert -1.0 <= m["grad_health/cosine_prev_step"] <= 1.0


def test_cosine_prev_step_is_exact_for_small_models() -> None:
    seen: dict[int, torch.Tensor] = {}

    class Recorder(Plain):
        def on_before_optimizer_step(self, optimizer) -> None:
            seen[self.trainer.global_step] = flat_grads(list(self.parameters())).clone()

    cb = GradientHealth(log_every_n_steps=4, update_ratio=False)
    fit(Recorder(), [cb], steps=9)
    expected = float(cosine_similarity(seen[8], seen[7]))
    assert cb.last_metrics["grad_health/cosine_prev_step"] == pytest.approx(expected, abs=1e-5)


def test_warns_when_norm_leaves_band() -> None:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        cb = GradientHealth(log_every_n_steps=5, patience=3, band=GradientHealth.SEED_BAND)
        fit(Plain(loss_scale=1e-4), [cb], steps=12)  # tiny gradients: far below the seed band's 0.5 edge
    assert cb.warnings and "below" in cb.warnings[0]
    assert any("outside the band" in str(w.message) for w in rec)
    quiet = GradientHealth(log_every_n_steps=5, patience=3, band=(0.0, 1e6))
    fit(Plain(loss_scale=1e-4), [quiet], steps=12)
    assert quiet.warnings == []


class Collapsing(Plain):
    """Gradients shrink 10^4x after step 8: a real change against the model's own scale."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * (1e-4 if self.trainer.global_step >= 8 else 1.0)


def test_default_band_is_relative_to_the_models_own_warmup_scale() -> None:
    # stable but tiny gradients (the seed band's 0.5 edge would warn): the learned band stays quiet
    steady = GradientHealth(log_every_n_steps=4, patience=3, warmup_steps=5)
    fit(Plain(loss_scale=1e-4), [steady], steps=24)
    assert steady.reference is not None and steady.reference < 0.05 and steady.warnings == []
    assert steady.band.low == pytest.approx(0.1 * steady.reference)
    assert steady.last_metrics["grad_health/band_high"] == pytest.approx(10 * steady.reference, rel=1e-5)
    # a collapse relative to the warm-up reference warns, naming the reference
    collapse = GradientHealth(log_every_n_steps=4, patience=3, warmup_steps=5)
    fit(Collapsing(), [collapse], steps=24)
    assert (
        collapse.warnings and "below" in collapse.warnings[0] and "warm-up reference" in collapse.warnings[0]
    )
    # the reference survives a resume
    restored = GradientHealth(warmup_steps=5)
    restored.load_state_dict(collapse.state_dict())
    assert restored.reference == collapse.reference and restored.band.high == collapse.band.high
    with pytest.raises(ValueError, match="relative_band"):
        GradientHealth(relative_band=(2.0, 10.0))


@pytest.mark.parametrize("fused", [False, True])
def test_reads_unscaled_gradients_under_fp16(fused: bool) -> None:
    """Lightning unscales before on_before_optimizer_step, except for fused optimizers (they unscale
    in step()): then the module sees scaled grads and the callback must divide by the scale itself."""
    scale = 1024.0
    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**6)
    )
    module = Plain(adam=True, lr=1e-3, fused=fused)
    cb = GradientHealth(log_every_n_steps=3, band=GradientHealth.SEED_BAND)
    fit(module, [cb], steps=4, plugins=[plugin])
    logged, seen = cb.last_metrics["grad_health/grad_norm"], module.seen_norms[3]
    expected = seen / scale if fused else seen
    assert logged == pytest.approx(expected, rel=1e-3)
    assert logged < 50  # an MSE on unit-scale data: never ~1000x
    run = 0  # consecutive out-of-band steps, recomputed from what the module saw
    for step in sorted(module.seen_norms):
        norm = module.seen_norms[step] / (scale if fused else 1.0)
        run = run + 1 if not 0.5 <= norm <= 2.0 else 0
    assert cb.state_dict()["band"]["run"] == run


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="log_every_n_steps=0"):
        GradientHealth(log_every_n_steps=0)
    with pytest.raises(ValueError, match="patience=0"):
        GradientHealth(patience=0)
    with pytest.raises(ValueError, match="band"):
        GradientHealth(band=(3.0, 1.0))
    with pytest.raises(ValueError, match="dim=4"):
        GradientSketch(dim=4)


def test_state_dict_round_trip() -> None:
    cb = GradientHealth(log_every_n_steps=2, band=GradientHealth.SEED_BAND)
    fit(Plain(loss_scale=1e-4), [cb], steps=6)
    state = cb.state_dict()
    other = GradientHealth(band=GradientHealth.SEED_BAND)
    other.load_state_dict(state)
    assert other.band.state_dict() == state["band"] and state["band"]["run"] > 0


def test_all_monitors_with_default_arguments_on_a_plain_module(tmp_path) -> None:
    """Every issue-5 callback, constructed with no arguments, on a module that is not the kit's."""
    from kit.callbacks.doctor import TrainingDoctor
    from kit.callbacks.hardware import HardwareMonitor
    from kit.callbacks.hessian import HessianMonitor
    from kit.callbacks.spike_guard import SpikeGuard

    cbs = [GradientHealth(), SpikeGuard(), HardwareMonitor(), TrainingDoctor(), HessianMonitor()]
    trainer = pl.Trainer(
        max_steps=60,
        val_check_interval=16,
        callbacks=cbs,
        logger=pl.loggers.CSVLogger(tmp_path),
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        enable_checkpointing=False,
    )
    trainer.fit(Plain(), loader(), loader(64))  # TinyRegressor logs val_loss
    assert cbs[0].last_metrics["grad_health/grad_norm"] > 0  # logged at the Trainer's cadence
    assert cbs[1].events == []  # a clean run
    assert "hw/step_time_s" in cbs[2].last_metrics
    assert len(cbs[3].history.val_loss) == 3 and cbs[3].history.steps  # recorded every 10 steps
    assert cbs[4].held_batch is not None and cbs[4].history == []  # default interval 1000 > 60 steps
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "grad_health/grad_norm" in metrics and "hw/step_time_s" in metrics


def test_microbatch_cosine_is_exact_for_small_models() -> None:
    cum: dict[tuple[int, int], torch.Tensor] = {}

    class Recorder(Plain):
        def on_after_backward(self) -> None:  # runs after the callbacks' on_after_backward
            key = (self.trainer.global_step, len([k for k in cum if k[0] == self.trainer.global_step]))
            cum[key] = flat_grads(list(self.parameters())).clone()

    cb = GradientHealth(log_every_n_steps=4, update_ratio=False)
    fit(Recorder(), [cb], steps=5, accumulate_grad_batches=3)
    micro = [cum[(4, 0)], cum[(4, 1)] - cum[(4, 0)], cum[(4, 2)] - cum[(4, 1)]]
    expected = (cosine_similarity(micro[1], micro[0]) + cosine_similarity(micro[2], micro[1])) / 2
    assert cb.last_metrics["grad_health/cosine_microbatch"] == pytest.approx(float(expected), abs=1e-5)

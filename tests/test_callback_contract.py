"""The callback contract, checked over every class in ``kit.callbacks.__all__``.

Each public callback (a) builds with default arguments and trains 3 steps on a tiny module that knows
nothing about the kit; (b) instantiates from a LightningCLI YAML; (c) round-trips ``state_dict``, is
restored by a ``ckpt_path`` resume, and two instances with different distinguishing arguments keep
separate state (``state_key``); (d) logs through ``pl_module.log`` so its metrics reach
``trainer.callback_metrics``; (e) the monitors see the gradients before clipping, whether
GradientClipping comes first or last in the callback list.

A new callback is one entry in ``SPECS``; the test fails until it has one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import (
    TinyClassifier,
    TinyRegressor,
    classification_loader,
    make_trainer,
    regression_loader,
)
from lightning.pytorch.cli import LightningCLI

import kit.callbacks
from kit.callbacks import GradientClipping, GradientHealth, SpikeGuard, TrainingDoctor
from kit.callbacks.loss_scale import ScaledFP16Precision


class RisingValLoss(TinyRegressor):
    """Validation loss that rises every evaluation, so TrainingDoctor writes (and logs) a report."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(1.0 + self.global_step))


@dataclass
class Spec:
    """How to exercise one callback class."""

    variant: dict[str, Any]  # a second instance with different distinguishing args (and the YAML's init_args)
    logs: dict[str, Any] = field(
        default_factory=dict
    )  # arguments that make it log (and hold state) in 3 steps
    key: str | None = None  # a metric it logs
    classifier: bool = False  # needs a classification module (MixUpCutMix)
    fp16: bool = False  # needs a loss scaler (LossScaleMonitor)
    validate: bool = False  # needs validation
    module: type[pl.LightningModule] = TinyRegressor
    not_logged: str | None = None  # why (d) is not checked here


class ClassMeans(torch.nn.Module):
    """A class-conditional 'generator' for the contract: the class index plus noise, shaped like the inputs."""

    latent_dim = 16

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (z + labels.view(-1, 1).float()).view(-1, 1, 4, 4)


SPECS: dict[str, Spec] = {
    "GenerativeAugment": Spec(
        {"ratio": 0.25}, {"generator": ClassMeans()}, key="gen_aug/synthetic_fraction", classifier=True
    ),
    "GradientClipping": Spec(
        {"mode": "value"}, {"mode": "autoclip"}, key="grad_norm/pre_clip"
    ),  # autoclip: stateful
    "GradientCompression": Spec(
        {"hook": "topk"},
        not_logged="needs DDP; tests/test_distributed_torchrun.py checks compression/ratio in callback_metrics",
    ),
    "GradientHealth": Spec({"prefix": "gh2/"}, key="grad_health/grad_norm"),
    "ExportHF": Spec(
        {"dirpath": "elsewhere"},
        not_logged="writes a Hugging Face folder when fit ends, where Lightning allows no logging",
    ),
    "HangWatchdog": Spec({"timeout_s": 600.0}, key="watchdog/max_idle_s"),
    "HardwareMonitor": Spec({"prefix": "hw2/"}, {"log_every_n_steps": 1}, key="hw/step_time_s"),
    "HessianMonitor": Spec(
        {"prefix": "hessian2/"}, {"log_every_n_steps": 1, "max_iter": 5}, key="hessian/top_eigenvalue"
    ),
    "KitCheckpoint": Spec({"every_n_train_steps": 2}, {"every_n_train_steps": 1}, key="checkpoint/saves"),
    "LossScaleMonitor": Spec({"min_scale": 1.0}, key="loss_scale/scale", fp16=True),
    "MixUpCutMix": Spec({"seed": 1}, key="mixup/lam", classifier=True),
    "PreemptionSave": Spec({"every_n_steps": 2}, key="preemption/stop"),
    "SpikeGuard": Spec({"action": "stop"}, key="spike_guard/spikes"),
    "TokenThroughput": Spec(
        {"window_size": 4}, {"window_size": 2, "log_every_n_steps": 1}, key="train/device/items_per_sec"
    ),
    "TrainingDoctor": Spec(
        {"monitor": "val_loss"},
        {"patience": 1, "log_every_n_steps": 1},
        key="doctor/problems",
        validate=True,
        module=RisingValLoss,
    ),
}
NAMES = list(kit.callbacks.__all__)


def _cls(name: str) -> type[pl.Callback]:
    return getattr(kit.callbacks, name)


def _fit(
    name: str,
    callbacks: list[pl.Callback],
    tmp_path: Path,
    steps: int = 3,
    ckpt_path: str | None = None,
    **kw: Any,
) -> pl.Trainer:
    spec = SPECS[name]
    if spec.classifier:
        module, loader = TinyClassifier(), classification_loader()
    else:
        module, loader = spec.module(), regression_loader()
    if spec.fp16:
        monitor = next(c for c in callbacks if type(c).__name__ == name)
        kw.setdefault("plugins", [monitor.precision_plugin("cpu")])
    if spec.validate:
        kw.update(val_check_interval=1, limit_val_batches=1)
        val = regression_loader(n=8)
    else:
        kw.setdefault("limit_val_batches", 0)
        val = None
    kw.setdefault("enable_checkpointing", any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks))
    trainer = make_trainer(tmp_path, callbacks, max_steps=steps, **kw)
    trainer.fit(module, loader, val, ckpt_path=ckpt_path)
    return trainer


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_every_public_callback_has_a_spec() -> None:
    assert sorted(NAMES) == sorted(SPECS), "add an entry to SPECS for each public callback"
    assert all(isinstance(_cls(n), type) and issubclass(_cls(n), pl.Callback) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builds_with_defaults_and_trains(name: str, tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    trainer = _fit(name, [_cls(name)()], tmp_path)
    assert trainer.global_step == 3


@pytest.mark.parametrize("name", NAMES)
def test_instantiates_from_lightning_cli_yaml(name: str, tmp_path: Path) -> None:
    config = {
        "trainer": {
            "accelerator": "cpu",
            "logger": False,
            "callbacks": [{"class_path": f"kit.callbacks.{name}", "init_args": SPECS[name].variant}],
        }
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(TinyRegressor, args=["--config", str(path)], run=False, save_config_callback=None)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, _cls(name))]
    for arg, value in SPECS[name].variant.items():
        assert getattr(cb, arg, getattr(getattr(cb, "transform", None), arg, value)) == value


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_resumes_and_does_not_collide(
    name: str, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    cls, spec = _cls(name), SPECS[name]
    first, second = cls(**spec.logs), cls(**{**spec.logs, **spec.variant})
    trainer = _fit(name, [first, second], tmp_path)
    ckpt_path = tmp_path / "resume.ckpt"
    trainer.save_checkpoint(ckpt_path)
    saved = torch.load(ckpt_path, weights_only=False)["callbacks"]

    state = first.state_dict()
    if name != "TokenThroughput":  # rates over a window of recent steps: nothing to resume
        assert state, f"{name} saved no state"
        assert first.state_key != second.state_key
        assert _same(saved[first.state_key], state)
        assert not second.state_dict() or _same(saved[second.state_key], second.state_dict())
    fresh = cls(**spec.logs)
    fresh.load_state_dict(state)
    assert _same(fresh.state_dict(), state)

    class Seen(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.state = resumed.state_dict()

    resumed, seen = cls(**spec.logs), Seen()
    trainer = _fit(
        name,
        [resumed, cls(**{**spec.logs, **spec.variant}), seen],
        tmp_path,
        steps=4,
        ckpt_path=str(ckpt_path),
    )
    assert trainer.global_step == 4
    assert _same(seen.state, saved.get(resumed.state_key, {}) if state else resumed.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_metrics_reach_callback_metrics(name: str, tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    spec = SPECS[name]
    if spec.not_logged:
        pytest.skip(spec.not_logged)
    trainer = _fit(name, [_cls(name)(**spec.logs)], tmp_path)
    assert spec.key in trainer.callback_metrics, sorted(trainer.callback_metrics)


def test_early_stopping_can_monitor_a_callback_metric(tmp_path: Path) -> None:
    stop = pl.callbacks.EarlyStopping("grad_health/grad_norm", patience=0, check_on_train_epoch_end=True)
    trainer = make_trainer(tmp_path, [GradientHealth(log_every_n_steps=1), stop], max_steps=-1, max_epochs=5)
    trainer.fit(TinyRegressor(lr=1e-6), regression_loader(n=16), ckpt_path=None)
    assert stop.best_score is not None and torch.isfinite(stop.best_score)


# -- (e) order independence: monitors see the gradients before clipping -----------------------------------


def _monitors() -> list[pl.Callback]:
    return [GradientHealth(log_every_n_steps=1), SpikeGuard(window=8), TrainingDoctor(log_every_n_steps=1)]


@pytest.mark.parametrize("precision", ["32", "16-mixed-fused"])
@pytest.mark.parametrize("clip_first", [True, False])
def test_monitors_see_unclipped_gradients_in_any_order(
    clip_first: bool, precision: str, tmp_path: Path
) -> None:
    fp16 = precision == "16-mixed-fused"
    clip, monitors = GradientClipping(max_norm=0.01), _monitors()
    callbacks = [clip, *monitors] if clip_first else [*monitors, clip]
    module = TinyRegressor(
        lr=1.0, loss_scale=1.0 if fp16 else 1e4, optimizer="adamw" if fp16 else "sgd", fused=fp16
    )
    before = [p.detach().clone() for p in module.parameters()]
    plugins = [ScaledFP16Precision("cpu", init_scale=1024)] if fp16 else []
    trainer = make_trainer(tmp_path, callbacks, max_steps=1, plugins=plugins, limit_val_batches=0)
    trainer.fit(module, regression_loader(target_scale=5.0))
    assert trainer.global_step == 1
    true_norm = float(clip.last["grad_norm/pre_clip"])
    assert true_norm > 1.0  # far above max_norm: clipping matters
    health, guard, doctor = monitors
    doctor._flush()
    assert health.last_metrics["grad_health/grad_norm"] == pytest.approx(true_norm, rel=1e-4)
    assert guard.detectors["grad_norm"].values[-1] == pytest.approx(true_norm, rel=1e-4)
    assert doctor.history.grad_norm[-1] == pytest.approx(true_norm, rel=1e-4)
    assert float(clip.last["grad_norm/post_clip"]) == pytest.approx(0.01, rel=1e-3)
    assert trainer.callback_metrics["grad_norm/post_clip"] == pytest.approx(0.01, rel=1e-3)
    if not fp16:  # SGD lr=1: the update is exactly the clipped gradient
        step = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(module.parameters(), before)])
        assert float(step.norm()) == pytest.approx(0.01, rel=1e-3)

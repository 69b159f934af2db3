"""LossScaleMonitor: bound the fp16 GradScaler's scale, log it, stop on overflow storms.

The scaler is configured where Lightning expects it, in the precision plugin: pass
``plugins=[monitor.precision_plugin("cuda")]`` (or ``ScaledFP16Precision(init_scale=1024, ...)`` in YAML,
or ``MixedPrecision("16-mixed", "cuda", scaler=make_grad_scaler(...))``). The callback checks at
``setup`` that the Trainer's scaler is configured as asked and says how to fix it if not.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_warn

from kit.precision.loss_scale import (
    LossScaleConfig,
    OverflowTracker,
    clamp_scale,
    make_grad_scaler,
    storm_diagnosis,
)

__all__ = ["LossScaleMonitor", "ScaledFP16Precision"]


class ScaledFP16Precision(MixedPrecision):
    """``precision="16-mixed"`` with the GradScaler's settings as arguments, so a YAML recipe can set them.

    Args:
        device: the accelerator type (``"cuda"``; ``"cpu"`` for tests).
        init_scale, growth_factor, backoff_factor, growth_interval: see :class:`LossScaleConfig`.

    Example:
        >>> plugin = ScaledFP16Precision("cpu", init_scale=1024)
        >>> plugin.scaler.get_scale()
        1024.0
    """

    def __init__(
        self,
        device: str = "cuda",
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        config = LossScaleConfig(init_scale, growth_factor, backoff_factor, growth_interval)
        super().__init__("16-mixed", device, scaler=make_grad_scaler(config, device))


class LossScaleMonitor(Callback):
    """Bound and watch the GradScaler of ``precision="16-mixed"`` for overflow storms.

    The scaler comes from the Trainer's precision plugin: build it from this callback's settings with
    :meth:`precision_plugin` (``Trainer(plugins=[monitor.precision_plugin("cuda")], callbacks=[monitor])``)
    or with :class:`ScaledFP16Precision` in YAML. At ``setup`` the callback checks that the scaler's
    ``init_scale``, ``growth_factor``, ``backoff_factor`` and ``growth_interval`` are the ones asked for
    and raises a ``ValueError`` naming the fix if not; a checkpoint restored afterwards still restores
    the saved scale. After every optimizer step the scale is clamped into ``[min_scale, max_scale]``, ``loss_scale/scale``,
    ``loss_scale/skipped`` and ``loss_scale/skipped_total`` are logged, and an overflow storm
    (``max_consecutive_skips`` skipped steps in a row, or the scale pinned at its floor while still
    overflowing for ``floor_patience`` steps) stops training with a diagnosis (suggesting bf16 or a lower LR).
    Under bf16 or fp32 there is no scaler: the callback says so once and does nothing.

    It reads the scale once per optimizer step (one scalar device-to-host copy); set
    ``log_every_n_steps`` higher to read it less often (skips between reads are then not counted).

    Args:
        init_scale: first scale (torch: 65536; the seed recipe: 1024).
        growth_factor: growth multiplier after ``growth_interval`` clean steps.
        backoff_factor: multiplier on overflow.
        growth_interval: clean steps between growths.
        min_scale: optional floor (seed recipe: 8).
        max_scale: optional ceiling (seed recipe: 1024).
        max_consecutive_skips: consecutive skipped steps that make a storm.
        floor_patience: steps at the floor (still overflowing) that make a storm.
        on_storm: ``"stop"`` (graceful ``trainer.should_stop``), ``"raise"`` (RuntimeError) or ``"warn"``.
        log_every_n_steps: read (and log) the scale every n optimizer steps.

    Raises:
        ValueError: for invalid bounds, factors or ``on_storm`` (at construction); a Trainer scaler
            configured differently from these arguments (at ``setup``).

    Example:
        >>> monitor = LossScaleMonitor(init_scale=1024, min_scale=8, max_scale=1024)
        >>> trainer = pl.Trainer(plugins=[monitor.precision_plugin("cuda")], callbacks=[monitor])  # doctest: +SKIP
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        min_scale: float | None = None,
        max_scale: float | None = None,
        max_consecutive_skips: int = 20,
        floor_patience: int = 50,
        on_storm: Literal["stop", "raise", "warn"] = "stop",
        log_every_n_steps: int = 1,
    ) -> None:
        self.config = LossScaleConfig(
            init_scale, growth_factor, backoff_factor, growth_interval, min_scale, max_scale
        )
        if on_storm not in ("stop", "raise", "warn"):
            raise ValueError(f"on_storm={on_storm!r} is not supported; choose 'stop', 'raise' or 'warn'")
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps={log_every_n_steps} must be >= 1")
        self.tracker = OverflowTracker(max_consecutive_skips, min_scale, floor_patience, init_scale)
        self.on_storm = on_storm
        self.log_every_n_steps = log_every_n_steps
        self.active = False
        self.diagnosis = ""
        self._last_step = -1

    def precision_plugin(self, device: str = "cuda") -> ScaledFP16Precision:
        """The ``16-mixed`` precision plugin whose GradScaler has this callback's settings."""
        c = self.config
        return ScaledFP16Precision(device, c.init_scale, c.growth_factor, c.backoff_factor, c.growth_interval)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        plugin = trainer.precision_plugin
        scaler = getattr(plugin, "scaler", None)
        if scaler is None:
            self.active = False
            rank_zero_warn(
                f"LossScaleMonitor: precision={getattr(plugin, 'precision', type(plugin).__name__)!r} uses no loss "
                "scaler, so there is nothing to configure or monitor (only precision='16-mixed' scales the loss)"
            )
            return
        if not self.active:  # first fit of this Trainer: the scale is still the initial one
            self._check_scaler(scaler)
        self.active = True

    def _check_scaler(self, scaler: torch.amp.GradScaler) -> None:
        c = self.config
        asked = {
            "init_scale": c.init_scale,
            "growth_factor": c.growth_factor,
            "backoff_factor": c.backoff_factor,
            "growth_interval": c.growth_interval,
        }
        has = {
            "init_scale": scaler.get_scale(),
            "growth_factor": scaler.get_growth_factor(),
            "backoff_factor": scaler.get_backoff_factor(),
            "growth_interval": scaler.get_growth_interval(),
        }
        wrong = {k: (asked[k], has[k]) for k in asked if float(asked[k]) != float(has[k])}
        if wrong:
            diff = ", ".join(f"{k}={a} (the Trainer's scaler has {h})" for k, (a, h) in wrong.items())
            raise ValueError(
                f"LossScaleMonitor asks for {diff}. Build the Trainer with plugins=[monitor.precision_plugin(device)] "
                "instead of precision='16-mixed' (in YAML: trainer.plugins: kit.callbacks.loss_scale.ScaledFP16Precision "
                "with the same init_args), or drop these arguments from LossScaleMonitor"
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active or trainer.global_step == self._last_step:
            return  # no optimizer step this batch (gradient accumulation)
        self._last_step = trainer.global_step
        if trainer.global_step % self.log_every_n_steps:
            return
        scaler = trainer.precision_plugin.scaler
        raw = scaler.get_scale()
        clamp_scale(scaler, self.config.min_scale, self.config.max_scale)
        lo = self.config.min_scale if self.config.min_scale is not None else raw
        hi = self.config.max_scale if self.config.max_scale is not None else raw
        status = self.tracker.update(raw, min(max(raw, lo), hi))
        pl_module.log("loss_scale/scale", status.scale, on_step=True, on_epoch=False)
        pl_module.log("loss_scale/skipped", float(status.skipped), on_step=True, on_epoch=False)
        pl_module.log("loss_scale/skipped_total", float(status.total_skips), on_step=True, on_epoch=False)
        if not status.storm:
            return
        lr = None
        if trainer.optimizers:
            lr = trainer.optimizers[0].param_groups[0].get("lr")
        self.diagnosis = storm_diagnosis(status, trainer.global_step, float(lr) if lr is not None else None)
        if self.on_storm == "raise":
            raise RuntimeError(self.diagnosis)
        rank_zero_warn(self.diagnosis)
        if self.on_storm == "stop":
            trainer.should_stop = True

    @property
    def state_key(self) -> str:
        return self._generate_state_key(min_scale=self.config.min_scale, max_scale=self.config.max_scale)

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "diagnosis": self.diagnosis}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict["tracker"])
        self.diagnosis = state_dict.get("diagnosis", "")

"""GradientClipping: clip gradients right before the optimizer steps, also with fused optimizers.

Lightning refuses ``Trainer(gradient_clip_val=...)`` when the optimizer unscales inside its own step
(``AdamW(fused=True)``), even under bf16 where there is no scaler, which forces the slower foreach AdamW.
This callback clips itself: under fp16 it first unscales through the Trainer's ``GradScaler`` in
``on_before_optimizer_step`` (once; if Lightning already unscaled, it does not unscale again), so the
GradScaler's ``step`` sees the optimizer as already unscaled and does not divide again.

The clipping itself runs in an optimizer step pre-hook (``register_step_pre_hook``, one per optimizer of
the fit), i.e. after every callback's and the module's ``on_before_optimizer_step``, where Lightning's own
``gradient_clip_val`` clips. So the monitors (GradientHealth, SpikeGuard, TrainingDoctor) see the
gradients before clipping whatever their place in the callback list. Under fp32/bf16 Lightning runs
forward and backward inside ``optimizer.step(closure)``; the pre-hook then wraps the closure and clips
when it returns. The pre/post norms are logged in ``on_train_batch_end``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from kit._compat import GradScalerView, strategy_traits
from kit.precision.clipping import AutoClip, adaptive_clip_, clip_by_norm, clip_by_value

__all__ = ["GradientClipping", "unscale_once"]

MODES = ("norm", "value", "autoclip", "agc")


def unscale_once(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Unscale ``optimizer``'s gradients through ``scaler`` unless that already happened this step.

    Args:
        scaler: a ``torch.amp.GradScaler`` (or None / a disabled scaler: nothing happens).
        optimizer: the optimizer about to step.

    Returns:
        True if this call unscaled, False if there was nothing to do.
    """
    if scaler is None or not scaler.is_enabled():
        return False
    if GradScalerView(scaler).is_unscaled(optimizer):
        return False
    scaler.unscale_(optimizer)
    if getattr(optimizer, "_step_supports_amp_scaling", False) and hasattr(optimizer, "grad_scale"):
        # A fused optimizer divides by ``optimizer.grad_scale`` inside step(); GradScaler leaves a stale
        # value there when an earlier step was not unscaled by us. The gradients are unscaled now.
        optimizer.grad_scale = None
    return True


class GradientClipping(Callback):
    """Clip gradients before every optimizer step; works with fused optimizers and fp16 loss scaling.

    Args:
        mode: ``"norm"`` (global norm, like ``clip_grad_norm_``), ``"value"`` (element-wise clamp),
            ``"autoclip"`` (clip to the ``percentile``-th percentile of recent norms) or ``"agc"``
            (adaptive unit-wise clipping relative to the weight norm).
        max_norm: the norm bound in ``"norm"`` mode (seed recipe: 1.0-5.0).
        clip_value: the element bound in ``"value"`` mode.
        percentile: AutoClip's percentile in (0, 100].
        history_size: AutoClip's bounded history length.
        clip_factor: AGC's lambda (0.01 in NFNets).
        agc_eps: AGC's floor on weight norms.
        agc_exclude: parameter-name substrings AGC leaves alone (NFNets skip the final classifier).
        norm_type: p of the norms.
        log_norms: log ``grad_norm/pre_clip`` and ``grad_norm/post_clip`` (and ``grad_norm/threshold``).

    Raises:
        ValueError: if ``mode`` or a bound is invalid.

    Example:
        >>> trainer = pl.Trainer(callbacks=[GradientClipping(mode="norm", max_norm=1.0)])  # doctest: +SKIP
        >>> # with: torch.optim.AdamW(model.parameters(), fused=True) in configure_optimizers
    """

    def __init__(
        self,
        mode: Literal["norm", "value", "autoclip", "agc"] = "norm",
        max_norm: float = 1.0,
        clip_value: float = 1.0,
        percentile: float = 10.0,
        history_size: int = 1000,
        clip_factor: float = 0.01,
        agc_eps: float = 1e-3,
        agc_exclude: tuple[str, ...] = (),
        norm_type: float = 2.0,
        log_norms: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; choose one of {', '.join(MODES)}")
        if max_norm <= 0:
            raise ValueError(f"max_norm={max_norm} must be > 0; the seed recipe uses 1.0")
        if clip_value <= 0:
            raise ValueError(f"clip_value={clip_value} must be > 0; try clip_value=1.0")
        if clip_factor <= 0 or agc_eps <= 0:
            raise ValueError(
                f"clip_factor={clip_factor} and agc_eps={agc_eps} must be > 0; NFNets use 0.01 and 1e-3"
            )
        self.mode = mode
        self.max_norm = max_norm
        self.clip_value = clip_value
        self.clip_factor = clip_factor
        self.agc_eps = agc_eps
        self.agc_exclude = tuple(agc_exclude)
        self.norm_type = norm_type
        self.log_norms = log_norms
        self.autoclip = AutoClip(percentile, history_size, norm_type)  # validates its own arguments
        self.last: dict[str, torch.Tensor] = {}
        self._unlogged = False
        self._handles: list[Any] = []
        self._module: pl.LightningModule | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        traits = strategy_traits(trainer.strategy)
        if traits.owns_optimizer_step:
            raise RuntimeError(
                f"GradientClipping cannot clip under {traits.name}, which owns the optimizer step; "
                "set DeepSpeed's 'gradient_clipping' in its config instead"
            )
        if traits.shards_gradients and self.mode != "norm":
            raise RuntimeError(
                f"GradientClipping(mode={self.mode!r}) needs whole gradients but {traits.name} shards them; "
                "use mode='norm' under FSDP"
            )
        if trainer.gradient_clip_val:
            rank_zero_warn(
                f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) and GradientClipping both clip; "
                "remove gradient_clip_val"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._module = pl_module
        self._handles = [opt.register_step_pre_hook(self._pre_step) for opt in trainer.optimizers]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()  # also when fit raised

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._module = [], None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Unscale only; the clipping waits for the step pre-hook, after every monitor has read the gradients.
        unscale_once(getattr(trainer.precision_plugin, "scaler", None), optimizer)

    def _pre_step(
        self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict] | None:
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
        if (
            closure is None
        ):  # fp16: GradScaler.step calls step() after the closure ran and the inf check passed
            self.clip(optimizer)
            return None

        @functools.wraps(closure)
        def clip_after(*a: Any, **k: Any) -> Any:  # fp32/bf16: forward, backward and hooks run in the closure
            out = closure(*a, **k)
            self.clip(optimizer)
            return out

        if "closure" in kwargs:
            return args, {**kwargs, "closure": clip_after}
        return (args[0], clip_after, *args[2:]), kwargs

    def clip(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip ``optimizer``'s gradients now (they must be unscaled) and keep the norms in ``self.last``."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return  # e.g. SpikeGuard dropped this update
        logs: dict[str, torch.Tensor] = {}
        trainer = self._module.trainer if self._module is not None else None
        strategy = trainer.strategy if trainer is not None else None
        if self.mode == "norm":
            fsdp_model = (
                strategy.model if strategy is not None and strategy_traits(strategy).shards_gradients else None
            )
            if fsdp_model is not None and hasattr(fsdp_model, "clip_grad_norm_"):
                pre = fsdp_model.clip_grad_norm_(self.max_norm, self.norm_type)
                post = pre * torch.clamp(self.max_norm / (pre + 1e-6), max=1.0)
            else:
                pre, post = clip_by_norm(params, self.max_norm, self.norm_type)
        elif self.mode == "value":
            pre, post = clip_by_value(params, self.clip_value, self.norm_type)
        elif self.mode == "autoclip":
            pre, post, logs["grad_norm/threshold"] = self.autoclip(params)
        else:
            names = {id(p): n for n, p in self._module.named_parameters()} if self._module is not None else {}
            chosen = [p for p in params if not any(x in names.get(id(p), "") for x in self.agc_exclude)]
            pre, post = adaptive_clip_(chosen, self.clip_factor, self.agc_eps, self.norm_type)
        logs["grad_norm/pre_clip"], logs["grad_norm/post_clip"] = pre, post
        self.last = {k: v.detach() for k, v in logs.items()}
        self._unlogged = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.log_norms and self._unlogged:  # tensors: no sync here
            pl_module.log_dict({k: v.float() for k, v in self.last.items()}, on_step=True, on_epoch=False)
        self._unlogged = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode)

    def state_dict(self) -> dict[str, Any]:
        return {"autoclip": self.autoclip.state_dict()} if self.mode == "autoclip" else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "autoclip" in state_dict:
            self.autoclip.load_state_dict(state_dict["autoclip"])

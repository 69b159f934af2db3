"""GradientHealth: gradient norms in a healthy band, cosine between steps and micro-batches, update/weight ratio.

Reads gradients in ``on_before_optimizer_step``, where Lightning has already unscaled them under
fp16 AMP; for optimizers that unscale inside ``step()`` (fused Adam), the gradients are still scaled
there, so the callback divides by the scaler's current scale itself (see
:func:`kit.callbacks._common.current_grad_scale`). Clipping (GradientClipping) happens after every
``on_before_optimizer_step``, so the norms are the pre-clip ones whatever the callback order.
All math stays on device; the only host syncs happen on logging steps (and once, when the warm-up
that sets the relative band ends).

The healthy band is relative by default: the geometric mean of the global norm over the first
``warmup_steps`` steps is the model's own reference, and the band is ``relative_band`` times it
((0.1, 10) x reference). Gradient norms differ by orders of magnitude between models (a toy regressor at ~100,
a small CNN at ~0.1), so no absolute band fits models that are not ours. Pass ``band=(low, high)`` for an
absolute band; ``GradientHealth.SEED_BAND`` = (0.5, 2.0) is the classic band for GPT pretraining with
clipping at 1.0.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[GradientHealth()])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from kit.callbacks._common import current_grad_scale, global_grad_norm, log_metrics, trainable_params
from kit.health.grads import (
    BandTracker,
    GradientSketch,
    cosine_similarity,
    grad_norms,
    group_by_layer,
    update_to_weight_ratios,
)

__all__ = ["GradientHealth"]


class GradientHealth(Callback):
    """Gradient norms, healthy band, step-to-step and micro-batch cosine, update/weight ratio.

    Args:
        log_every_n_steps: logging cadence in optimizer steps (``None``: the Trainer's).
        band: absolute healthy global grad-norm band ``(low, high)``, opt-in; ``None`` (default) learns the
            band: ``relative_band`` times the geometric-mean norm of the first ``warmup_steps`` steps.
            ``GradientHealth.SEED_BAND`` is the classic absolute (0.5, 2.0).
        relative_band: ``(low, high)`` factors around the learned reference.
        warmup_steps: optimizer steps that set the reference (no band check before).
        patience: warn when the norm stays outside the band this many consecutive steps.
        per_layer: log per-layer norms.
        layer_depth: name components that make a layer (``None``: owning module).
        cosine: cosine similarity between consecutive steps' gradients (bar: > 0.8 in the seed).
        microbatch_cosine: mean cosine between consecutive micro-batches under accumulation.
        update_ratio: per-layer ``|dw| / |w|`` (target ~1e-3).
        update_ratio_budget: parameters copied per logging step for the ratio; layers rotate when
            the model is larger, so the extra memory is bounded.
        projection_dim: size of the random projection that stores the previous gradient.
        prefix: metric name prefix.

    Raises:
        ValueError: on a non-positive cadence/patience or a bad band.

    Example:
        >>> cb = GradientHealth(log_every_n_steps=10)  # band learned over the first 100 steps
        >>> seed = GradientHealth(band=GradientHealth.SEED_BAND)  # the classic absolute (0.5, 2.0)
    """

    SEED_BAND = (0.5, 2.0)

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        band: tuple[float, float] | None = None,
        relative_band: tuple[float, float] = (0.1, 10.0),
        warmup_steps: int = 100,
        patience: int = 10,
        per_layer: bool = True,
        layer_depth: int | None = None,
        cosine: bool = True,
        microbatch_cosine: bool = True,
        update_ratio: bool = True,
        update_ratio_budget: int = 1 << 26,
        projection_dim: int = 8192,
        prefix: str = "grad_health/",
    ) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps} must be >= 1 or None (use the Trainer's)"
            )
        if patience < 1:
            raise ValueError(f"patience={patience} must be >= 1; e.g. patience=10")
        if not 0 < relative_band[0] < 1 < relative_band[1]:
            raise ValueError(
                f"relative_band={tuple(relative_band)} needs 0 < low < 1 < high (factors of the learned reference); "
                "e.g. (0.1, 10.0)"
            )
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 1; e.g. 100")
        self.absolute_band = tuple(band) if band is not None else None
        self.relative_band, self.warmup_steps = tuple(relative_band), warmup_steps
        # absolute: the tracker is ready; relative: built when the warm-up ends (placeholder edges until then)
        self.band = BandTracker(*band) if band is not None else BandTracker(*relative_band)
        self.reference: float | None = None  # learned geometric-mean norm
        self._log_sum: Tensor | None = None
        self._log_n = 0
        self.log_every_n_steps, self.patience = log_every_n_steps, patience
        self.per_layer, self.layer_depth = per_layer, layer_depth
        self.cosine, self.microbatch_cosine, self.update_ratio = cosine, microbatch_cosine, update_ratio
        self.update_ratio_budget, self.prefix = update_ratio_budget, prefix
        self.sketch = GradientSketch(projection_dim)
        self.last_metrics: dict[str, float] = {}
        self.warnings: list[str] = []
        self._prev_sketch: Tensor | None = None
        self._prev_sketch_step = -1
        self._snapshot: dict[str, Tensor] = {}
        self._ratio_offset = 0
        self._micro: dict[str, Any] = {}
        self._pending: dict[str, Tensor] = {}
        self._groups: dict[str, list[str]] = {}

    # -- band ------------------------------------------------------------------------------------------
    def _track(self, total: Tensor) -> None:
        """Feed the band; in relative mode, first learn the reference (log-norms summed on device)."""
        if self.absolute_band is not None or self.reference is not None:
            self.band.update(total)
            return
        log_norm = total.detach().float().clamp_min(1e-30).log()
        self._log_sum = log_norm if self._log_sum is None else self._log_sum + log_norm
        self._log_n += 1
        if self._log_n >= self.warmup_steps:  # one sync, once
            self._set_reference(float(torch.exp(self._log_sum / self._log_n)))

    def _set_reference(self, reference: float) -> None:
        self.reference = reference
        low, high = self.relative_band
        self.band = BandTracker(reference * low, reference * high)

    # -- cadence ----------------------------------------------------------------------------------
    def _every(self, trainer: pl.Trainer) -> int:
        return self.log_every_n_steps or max(1, trainer.log_every_n_steps)

    def _is_log_step(self, trainer: pl.Trainer, step: int | None = None) -> bool:
        step = trainer.global_step if step is None else step
        return step % self._every(trainer) == 0

    # -- hooks -------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after configure_model and strategy wrapping, so the names are final
        names = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        self._groups = group_by_layer(names, self.layer_depth)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        acc = trainer.accumulate_grad_batches
        if self.microbatch_cosine and acc > 1 and self._is_log_step(trainer):
            if batch_idx % acc == 0:
                self._micro = {"cum": None, "prev": None, "cos": []}
        else:
            self._micro = {}

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._micro:
            return
        params = [p for p in pl_module.parameters() if p.requires_grad]
        cum = self.sketch.project([p.grad for p in params], like=params)
        micro = cum if self._micro["cum"] is None else cum - self._micro["cum"]
        if self._micro["prev"] is not None:
            self._micro["cos"].append(cosine_similarity(micro, self._micro["prev"]))
        self._micro.update(cum=cum, prev=micro)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        total = global_grad_norm(trainer, pl_module, optimizer)
        self._track(total)
        step = trainer.global_step
        every = self._every(trainer)
        log_now = step % every == 0
        if not (log_now or (self.cosine and (step + 1) % every == 0)):
            return  # the common case: two device ops, no sync
        params = trainable_params(trainer, pl_module)
        if self.cosine:
            plist = list(params.values())
            sk = self.sketch.project([p.grad for p in plist], like=plist)
            if log_now and self._prev_sketch is not None and self._prev_sketch_step == step - 1:
                self._pending[self.prefix + "cosine_prev_step"] = cosine_similarity(sk, self._prev_sketch)
            self._prev_sketch, self._prev_sketch_step = sk, step
        if not log_now:
            return
        if not self._groups:  # on_train_start did not run (e.g. hooks called by hand)
            self.on_train_start(trainer, pl_module)
        m = self._pending
        m[self.prefix + "grad_norm"] = total
        m[self.prefix + "out_of_band_run"] = self.band.worst_run()
        if self.absolute_band is not None or self.reference is not None:
            m[self.prefix + "band_low"] = torch.tensor(self.band.low)
            m[self.prefix + "band_high"] = torch.tensor(self.band.high)
        if self.per_layer:
            _, per = grad_norms(params, self._groups, scale=current_grad_scale(trainer, optimizer))
            m.update({f"{self.prefix}layer_norm/{k}": v for k, v in per.items()})
        if self._micro.get("cos"):
            m[self.prefix + "cosine_microbatch"] = torch.stack(self._micro["cos"]).mean()
        if self.update_ratio:
            self._snapshot = self._take_snapshot(params)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._pending:
            return
        if self._snapshot:
            params = trainable_params(trainer, pl_module)
            after = {n: params[n] for n in self._snapshot}
            groups = {k: [n for n in v if n in self._snapshot] for k, v in self._groups.items()}
            ratios = update_to_weight_ratios(self._snapshot, after, {k: v for k, v in groups.items() if v})
            self._pending.update({f"{self.prefix}update_ratio/{k}": v for k, v in ratios.items()})
            self._snapshot = {}
        self.last_metrics = log_metrics(pl_module, self._pending)  # a logging step: one sync
        self._pending = {}
        run = self.last_metrics.get(self.prefix + "out_of_band_run", 0.0)
        if run >= self.patience:
            side = "above" if self.band.last_side > 0 else "below"
            how = (
                f"absolute band {self.absolute_band}"
                if self.absolute_band is not None
                else f"{self.relative_band} x the warm-up reference {self.reference:.3g}"
            )
            msg = (
                f"GradientHealth: global grad norm stayed outside the band ({self.band.low:.3g}, {self.band.high:.3g}; "
                f"{how}) for "
                f"{int(run)} consecutive steps (last {self.last_metrics[self.prefix + 'grad_norm']:.3g}, {side}); "
                "check the learning rate, warmup and clipping"
            )
            self.warnings.append(msg)
            if len(self.warnings) <= 5:
                rank_zero_warn(msg + ("" if len(self.warnings) < 5 else " (further warnings only logged)"))
        self.band.reset_worst()

    def _take_snapshot(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        layers = list(self._groups.items())
        if not layers:
            return {}
        chosen: dict[str, Tensor] = {}
        used = 0
        for i in range(len(layers)):
            _, names = layers[(self._ratio_offset + i) % len(layers)]
            size = sum(params[n].numel() for n in names if n in params)
            if chosen and used + size > self.update_ratio_budget:
                self._ratio_offset = (self._ratio_offset + i) % len(layers)
                break
            chosen.update({n: params[n].detach().clone() for n in names if n in params})
            used += size
        return chosen

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return {
            "band": self.band.state_dict(),
            "warnings": list(self.warnings),
            "ratio_offset": self._ratio_offset,
            "reference": self.reference,
            "log_sum": float(self._log_sum) if self._log_sum is not None else None,
            "log_n": self._log_n,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.absolute_band is None and state_dict.get("reference") is not None:
            self._set_reference(float(state_dict["reference"]))
        log_sum = state_dict.get("log_sum")
        self._log_sum = torch.tensor(log_sum) if log_sum is not None else None
        self._log_n = int(state_dict.get("log_n", 0))
        self.band.load_state_dict(state_dict.get("band", {}))
        self.warnings = list(state_dict.get("warnings", []))
        self._ratio_offset = int(state_dict.get("ratio_offset", 0))

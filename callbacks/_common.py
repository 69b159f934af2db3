"""What the callbacks share: unscaled gradients, parameter selection, logging, silenced logging.

- :func:`current_grad_scale` / :func:`global_grad_norm`: the gradient norm of this optimizer step as the
  optimizer will see it, whether Lightning already unscaled the fp16 gradients or the optimizer unscales
  inside its own ``step`` (``fused=True`` Adam/AdamW); computed once per step and shared by the monitors.
- :func:`trainable_params`: ``{name: parameter}`` of the trainable parameters, cached per fit.
- :func:`log_metrics`: log through ``pl_module.log_dict``, so every metric reaches
  ``trainer.callback_metrics`` (EarlyStopping and ModelCheckpoint can monitor it) and every logger.
- :func:`silenced_logging` / :func:`loss_from_output`: re-run a module's ``training_step`` for a probe
  without disturbing the run's logs and metrics.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping, MutableMapping, MutableSequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from kit._compat import GradScalerView, metric_snapshot, restore_metric
from kit.health.grads import grad_norms

__all__ = [
    "current_grad_scale",
    "global_grad_norm",
    "log_metrics",
    "loss_from_output",
    "silenced_logging",
    "trainable_params",
]

_NORM_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PARAM_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def current_grad_scale(trainer: pl.Trainer, optimizer: Any) -> Tensor | None:
    """The loss scale if the gradients are still scaled right now, else ``None``.

    Under ``precision="16-mixed"`` Lightning unscales before ``on_before_optimizer_step`` unless the
    optimizer handles unscaling in its own ``step`` (``fused=True`` Adam/AdamW); then the gradients in
    the hook are still multiplied by the scale (until a callback such as GradientClipping unscales them).
    """
    return GradScalerView(getattr(trainer.precision_plugin, "scaler", None)).grad_scale(optimizer)


def trainable_params(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
    """``{name: parameter}`` of the trainable parameters, cached per (module, trainer).

    Walking ``named_parameters()`` costs ~1 ms per call on a small GPT; the monitors need it every
    step, so it is built once per fit (parameters are updated in place, never replaced, during fit).
    """
    hit = _PARAM_CACHE.get(pl_module)
    if hit is None or hit[0] != id(trainer):
        hit = (id(trainer), {n: p for n, p in pl_module.named_parameters() if p.requires_grad})
        _PARAM_CACHE[pl_module] = hit
    return hit[1]


def global_grad_norm(trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> Tensor:
    """Unscaled global gradient norm of this optimizer step, computed once and shared by the monitors.

    GradientHealth, SpikeGuard and TrainingDoctor all need it in ``on_before_optimizer_step``; the
    first caller computes it (on device, no sync) and the others reuse it for the same step. Clipping
    happens later (GradientClipping clips in an optimizer step pre-hook), so this is the pre-clip norm.
    """
    key = (id(pl_module), id(getattr(optimizer, "optimizer", optimizer)), trainer.global_step)
    hit = _NORM_CACHE.get(trainer)
    if hit is not None and hit[0] == key:
        return hit[1]
    total, _ = grad_norms(
        trainable_params(trainer, pl_module), {}, scale=current_grad_scale(trainer, optimizer)
    )
    _NORM_CACHE[trainer] = (key, total)
    return total


def log_metrics(pl_module: pl.LightningModule, metrics: Mapping[str, Tensor | float]) -> dict[str, float]:
    """Log ``metrics`` per step through ``pl_module.log_dict`` and return them as floats (one device sync).

    Call it from a hook where Lightning allows logging (``on_train_batch_end``,
    ``on_before_optimizer_step``...) and only on logging steps: the returned floats cost one sync.
    """
    if not metrics:
        return {}
    logged = {
        k: v.detach().float().reshape(()) if isinstance(v, Tensor) else float(v) for k, v in metrics.items()
    }
    pl_module.log_dict(logged, on_step=True, on_epoch=False)
    tensors = [v for v in logged.values() if isinstance(v, Tensor)]
    if not tensors:
        return {k: float(v) for k, v in logged.items()}
    it = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist())
    return {k: next(it) if isinstance(v, Tensor) else float(v) for k, v in logged.items()}


@contextlib.contextmanager
def silenced_logging(module: pl.LightningModule) -> Iterator[None]:
    """Make ``self.log``/``self.log_dict`` no-ops and undo torchmetrics updates while a probe re-runs
    ``training_step``, so the run's own logs and running metrics are not disturbed."""
    saved = [snap for snap in map(metric_snapshot, module.modules()) if snap is not None]
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    module.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.log
        del module.log_dict
        for snap in saved:
            restore_metric(snap)


def loss_from_output(out: Any) -> Tensor:
    """The loss in what ``training_step`` returned (a tensor or a dict with ``"loss"``).

    Raises:
        TypeError: for anything else, naming the ``loss_fn=`` escape hatch.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict) and "loss" in out:
        return out["loss"]
    raise TypeError(
        f"training_step returned {type(out).__name__}; the probe needs a loss tensor or a dict with 'loss'. "
        "Pass loss_fn=lambda module, batch: ... instead"
    )


def batch_inputs_targets(batch: Any, input_key: str, target_key: str, cannot: str) -> tuple[Any, Any]:
    """``(x, y)`` of a batch a callback will replace in place: a dict (by key) or a list (first two items).

    Raises:
        ValueError: for any other batch (a tuple cannot be changed in place); ``cannot`` completes the message
            with the caller's name and its fix.
    """
    if isinstance(batch, MutableMapping):
        return batch[input_key], batch[target_key]
    if isinstance(batch, MutableSequence):
        return batch[0], batch[1]
    raise ValueError(cannot.format(kind=type(batch).__name__))


def replace_inputs_targets(batch: Any, input_key: str, target_key: str, x: Any, y: Any) -> None:
    """Write ``x`` and ``y`` back where :func:`batch_inputs_targets` read them."""
    if isinstance(batch, MutableMapping):
        batch[input_key], batch[target_key] = x, y
    else:
        batch[0], batch[1] = x, y

"""MixUp / CutMix as a batch transform and as a callback that applies it to training batches on device.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[MixUpCutMix.from_preset("deit", num_classes=10)])  # doctest: +SKIP

The module under training must accept soft targets ``(B, C)``: ``torch.nn.functional.cross_entropy`` does
out of the box, so most classifiers need no change.
"""

from __future__ import annotations

from collections.abc import MutableMapping, MutableSequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from kit.data.augment_image import cutmix_batch, mixup_batch, one_hot_targets

__all__ = ["PRESETS", "MixUpCutMix", "MixUpTransform"]

# DeiT (Touvron et al. 2021) / timm defaults.
PRESETS: dict[str, dict[str, float]] = {
    "deit": {
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "prob": 1.0,
        "switch_prob": 0.5,
        "label_smoothing": 0.1,
    },
    "mixup": {
        "mixup_alpha": 0.2,
        "cutmix_alpha": 0.0,
        "prob": 1.0,
        "switch_prob": 0.0,
        "label_smoothing": 0.0,
    },
    "cutmix": {
        "mixup_alpha": 0.0,
        "cutmix_alpha": 1.0,
        "prob": 1.0,
        "switch_prob": 1.0,
        "label_smoothing": 0.0,
    },
}


class MixUpTransform:
    """Callable ``(x, y) -> (x_mixed, soft_targets)`` that picks MixUp or CutMix per batch.

    With probability ``prob`` the batch is mixed; then CutMix is used with probability ``switch_prob`` when
    both are enabled (alpha > 0). Unmixed batches still get one-hot (smoothed) targets, so the loss sees one
    target format. Use it in ``on_after_batch_transfer`` of your own module or datamodule, or through
    ``MixUpCutMix``.

    Args:
        mixup_alpha: Beta parameter of MixUp; 0 disables MixUp.
        cutmix_alpha: Beta parameter of CutMix; 0 disables CutMix.
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix rather than MixUp when both are enabled.
        label_smoothing: smoothing of the one-hot targets.
        num_classes: number of classes (needed for integer labels).
        seed: seed of the transform's own CPU generator (draws never sync with the device).

    Raises:
        ValueError: a probability outside [0, 1], a negative alpha, or both alphas 0 with ``prob > 0``.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must lie in [0, 1]")
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0 (0 disables it)")
        if prob > 0 and mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0; enable one or set prob=0")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1)")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing
        self.num_classes = num_classes
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.last: dict[str, float] = {}

    def _choose(self) -> str:
        u = torch.rand(2, generator=self.generator).tolist()
        if u[0] >= self.prob:
            return "none"
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return "cutmix" if u[1] < self.switch_prob else "mixup"
        return "mixup" if self.mixup_alpha > 0 else "cutmix"

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mode = self._choose()
        kw = {
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
            "generator": self.generator,
        }
        if mode == "mixup":
            x, t, lam, _ = mixup_batch(x, y, alpha=self.mixup_alpha, **kw)
        elif mode == "cutmix":
            x, t, lam, _ = cutmix_batch(x, y, alpha=self.cutmix_alpha, **kw)
        else:
            t, lam = one_hot_targets(y, self.num_classes, self.label_smoothing), 1.0
        self.last = {"lam": lam, "cutmix": float(mode == "cutmix"), "mixed": float(mode != "none")}
        return x, t.to(x.dtype) if x.is_floating_point() else t

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class MixUpCutMix(Callback):
    """Apply ``MixUpTransform`` to every training batch after it reached the device.

    The batch must be a list ``[x, y, ...]`` (what the default collate makes of ``(x, y)`` samples) or a dict
    (keys ``input_key`` / ``target_key``); it is modified in place before ``training_step`` sees it. Logs
    ``mixup/lam`` and ``mixup/cutmix`` once per step. Works with any LightningModule whose loss accepts
    soft targets.

    Args:
        mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing, seed: see ``MixUpTransform``
            (defaults: the DeiT recipe).
        num_classes: classes for integer labels; ``None`` reads ``pl_module.num_classes`` or
            ``pl_module.hparams.num_classes`` at fit start.
        input_key, target_key: dict-batch keys.
        log: log the draws.

    Raises:
        ValueError: invalid probabilities or alphas (at construction); no class count or a tuple batch
            (at the first batch), with the fix in the message.

    Example:
        >>> cb = MixUpCutMix.from_preset("deit", num_classes=10)
        >>> cb.transform.mixup_alpha, cb.transform.switch_prob, cb.transform.label_smoothing
        (0.8, 0.5, 0.1)
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int | None = None,
        seed: int = 0,
        input_key: str = "image",
        target_key: str = "label",
        log: bool = True,
    ) -> None:
        self.transform = MixUpTransform(
            mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing, num_classes, seed
        )
        self.input_key, self.target_key, self.log = input_key, target_key, log

    @classmethod
    def from_preset(cls, name: str = "deit", **overrides: Any) -> MixUpCutMix:
        """Build from a named preset (``deit``, ``mixup``, ``cutmix``) with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} unknown; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.transform.num_classes is None:
            n = getattr(pl_module, "num_classes", None) or getattr(pl_module, "hparams", {}).get(
                "num_classes"
            )
            self.transform.num_classes = int(n) if n else None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, MutableMapping):
            x, y = batch[self.input_key], batch[self.target_key]
        elif isinstance(batch, MutableSequence):
            x, y = batch[0], batch[1]
        else:
            raise ValueError(
                f"MixUpCutMix cannot modify a {type(batch).__name__} batch in place; return a list [x, y] or a "
                "dict from your collate, or call MixUpTransform in your module's on_after_batch_transfer"
            )
        if y.dim() == 1 and self.transform.num_classes is None:
            raise ValueError(
                "integer labels need a class count: pass MixUpCutMix(num_classes=C) or set pl_module.num_classes"
            )
        x, t = self.transform(x, y)
        if isinstance(batch, MutableMapping):
            batch[self.input_key], batch[self.target_key] = x, t
        else:
            batch[0], batch[1] = x, t
        if self.log:
            last = self.transform.last
            pl_module.log("mixup/lam", last["lam"], on_step=True, on_epoch=False, batch_size=x.shape[0])
            pl_module.log("mixup/cutmix", last["cutmix"], on_step=True, on_epoch=False, batch_size=x.shape[0])

    def state_dict(self) -> dict[str, Any]:
        return self.transform.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.transform.load_state_dict(state_dict)

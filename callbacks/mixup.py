"""MixUpCutMix: apply :class:`kit.data.augment_image.MixUpTransform` to training batches on device.

Example:
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(callbacks=[MixUpCutMix.from_preset("deit", num_classes=10)])  # doctest: +SKIP

The module under training must accept soft targets ``(B, C)``: ``torch.nn.functional.cross_entropy`` does
out of the box, so most classifiers need no change.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from kit.callbacks._common import batch_inputs_targets, replace_inputs_targets
from kit.data.augment_image import MixUpTransform

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


class MixUpCutMix(Callback):
    """Apply ``MixUpTransform`` to every training batch after it reached the device.

    The batch must be a list ``[x, y, ...]`` (what the default collate makes of ``(x, y)`` samples) or a dict
    (keys ``input_key`` / ``target_key``); it is modified in place before ``training_step`` sees it. Logs
    ``mixup/lam`` and ``mixup/cutmix`` once per step. Works with any LightningModule whose loss accepts
    soft targets.

    Args:
        mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing, seed: see ``MixUpTransform``
            (defaults: the DeiT recipe).
        num_classes: number of classes; ``None`` finds it, in this order: ``pl_module.num_classes`` or
            ``pl_module.hparams.num_classes`` (at setup); the width of the first soft target ``(B, C)``; the width
            of the module's output ``(B, C)`` on the first batch's inputs (one forward pass in eval mode, no
            gradients, integer targets). If none applies, the first batch raises a ``ValueError`` naming the fix.
        input_key, target_key: dict-batch keys.
        log: log the draws.

    Raises:
        ValueError: invalid probabilities or alphas (at construction); integer inputs such as token ids, which
            cannot be interpolated, a tuple batch, or no way to find the class count (at the first batch); each
            with the fix in the message.

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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.transform.num_classes is not None:
            return
        hparams = getattr(pl_module, "hparams", {})
        n = getattr(pl_module, "num_classes", None) or (hparams.get("num_classes") if hparams else None)
        if n:
            self.transform.num_classes = int(n)
        else:
            rank_zero_info(
                f"MixUpCutMix: {type(pl_module).__name__} has no num_classes; the class count will come from the "
                "first batch (soft target width, else the module's output width); pass num_classes=C to fix it"
            )

    def _infer_num_classes(self, pl_module: pl.LightningModule, x: Any, y: Any) -> int:
        """The class count from a soft target ``(B, C)`` or the module's output ``(B, C)`` on ``x``."""
        if torch.is_tensor(y) and y.dim() == 2 and y.is_floating_point():
            return int(y.shape[1])
        was_training = pl_module.training
        try:
            pl_module.eval()
            with torch.no_grad():
                out = pl_module(x)
        except Exception as err:  # any forward signature: the fix is the same
            raise ValueError(
                f"MixUpCutMix needs the class count: {type(pl_module).__name__} has no num_classes, the targets are "
                f"class indices, and calling the module on the inputs failed ({type(err).__name__}: {err}); pass "
                "MixUpCutMix(num_classes=C) or set self.num_classes in the module"
            ) from err
        finally:
            pl_module.train(was_training)
        if not (torch.is_tensor(out) and out.dim() == 2 and out.shape[0] == x.shape[0] and out.shape[1] > 1):
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(
                f"MixUpCutMix needs the class count: the targets are class indices and {type(pl_module).__name__}'s "
                f"output is {shape}, not (batch, classes); pass MixUpCutMix(num_classes=C)"
            )
        rank_zero_info(f"MixUpCutMix: {out.shape[1]} classes, from the module's output width")
        return int(out.shape[1])

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        x, y = batch_inputs_targets(
            batch,
            self.input_key,
            self.target_key,
            "MixUpCutMix cannot modify a {kind} batch in place; return a list [x, y] or a dict from your collate, "
            "or call MixUpTransform in your module's on_after_batch_transfer",
        )
        if not torch.is_tensor(x) or not x.is_floating_point():
            what = f"{x.dtype} inputs of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"MixUpCutMix mixes continuous inputs (images, features) and got {what}: integer inputs such as "
                "token ids cannot be interpolated. Convert images to float (e.g. ToDtype(torch.float32, scale=True)), "
                "or for text mix embeddings inside the module (kit.data.augment_image.mixup_batch on the embedding "
                "output) and drop this callback"
            )
        if self.transform.num_classes is None and not (y.dim() == 2 and y.is_floating_point()):
            self.transform.num_classes = self._infer_num_classes(pl_module, x, y)
        x, t = self.transform(x, y)
        replace_inputs_targets(batch, self.input_key, self.target_key, x, t)
        if self.log:
            last = self.transform.last
            pl_module.log("mixup/lam", last["lam"], on_step=True, on_epoch=False, batch_size=x.shape[0])
            pl_module.log("mixup/cutmix", last["cutmix"], on_step=True, on_epoch=False, batch_size=x.shape[0])

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            input_key=self.input_key, target_key=self.target_key, seed=self.transform.seed
        )

    def state_dict(self) -> dict[str, Any]:
        return self.transform.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.transform.load_state_dict(state_dict)

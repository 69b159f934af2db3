"""MixUp and CutMix on a batch, with soft targets.

Both functions pair sample ``i`` with sample ``perm[i]`` and mix the targets with the same weight as the
inputs, so every target row still sums to 1. Random draws (``lam``, ``perm``, the CutMix box) can be passed
in so tests and distributed runs can pin them; otherwise they come from ``generator``.

Example:
    >>> x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> xm, ym, lam, perm = mixup_batch(x, y, num_classes=4, lam=0.7, perm=torch.tensor([1, 0, 3, 2]))
    >>> ym[0].tolist()
    [0.699999988079071, 0.30000001192092896, 0.0, 0.0]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["MixUpTransform", "cutmix_batch", "cutmix_box", "mixup_batch", "one_hot_targets", "sample_lambda"]


def one_hot_targets(y: Tensor, num_classes: int | None = None, label_smoothing: float = 0.0) -> Tensor:
    """Class indices ``(B,)`` or soft targets ``(B, C)`` -> float targets ``(B, C)``, optionally smoothed.

    Raises:
        ValueError: integer labels without ``num_classes``, or smoothing outside [0, 1).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 1); DeiT uses 0.1")
    if y.dim() == 1:
        if num_classes is None:
            raise ValueError("integer labels need num_classes=C to build one-hot targets")
        # scatter rather than F.one_hot: no value check, so no host-device sync on CUDA
        y = torch.zeros(y.shape[0], num_classes, device=y.device).scatter_(1, y.long().view(-1, 1), 1.0)
    else:
        y = y.float()
    if label_smoothing:
        y = y * (1.0 - label_smoothing) + label_smoothing / y.shape[-1]
    return y


def sample_lambda(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw from Beta(alpha, alpha); reproducible when ``generator`` is given.

    Raises:
        ValueError: ``alpha <= 0``.
    """
    if not alpha > 0:
        raise ValueError(f"alpha={alpha} must be > 0 (MixUp typically 0.2-0.8, CutMix 1.0)")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _perm(batch: int, perm: Tensor | None, generator: torch.Generator | None, device: torch.device) -> Tensor:
    if perm is None:
        perm = torch.randperm(batch, generator=generator)
    if perm.shape != (batch,):
        raise ValueError(f"perm has shape {tuple(perm.shape)}; expected ({batch},)")
    return perm.to(device, non_blocking=True)  # CPU-drawn permutation; no sync on the way to the device


def mixup_batch(
    x: Tensor,
    y: Tensor,
    alpha: float = 0.2,
    num_classes: int | None = None,
    lam: float | None = None,
    perm: Tensor | None = None,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, float, Tensor]:
    """MixUp (Zhang et al. 2018): ``x' = lam x + (1 - lam) x[perm]``, same for the targets.

    Args:
        x: inputs ``(B, ...)``.
        y: class indices ``(B,)`` or soft targets ``(B, C)``.
        alpha: Beta(alpha, alpha) parameter used when ``lam`` is not given.
        num_classes: needed with class indices.
        lam: the mixing weight; drawn if ``None``.
        perm: pairing permutation ``(B,)``; drawn if ``None``.
        label_smoothing: applied to the targets before mixing.
        generator: source of the draws (CPU generator).

    Returns:
        ``(mixed_x, soft_targets (B, C), lam, perm)``.
    """
    lam = sample_lambda(alpha, generator) if lam is None else float(lam)
    perm = _perm(x.shape[0], perm, generator, x.device)
    t = one_hot_targets(y, num_classes, label_smoothing)
    x_mixed = x * lam + x[perm] * (1.0 - lam)
    return x_mixed, t * lam + t[perm] * (1.0 - lam), lam, perm


def cutmix_box(
    height: int, width: int, lam: float, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image: side ratio ``sqrt(1 - lam)``, uniform centre, clipped.

    Sides are ``int(size * sqrt(1 - lam))`` and the box spans ``cut // 2`` before the centre and
    ``(cut + 1) // 2`` after it, so an unclipped box has exactly the cut size, odd sizes included (timm 1.0.31's
    ``rand_bbox``; ``cut // 2`` on both sides, as in older timm releases and the CutMix reference code, loses a
    row and a column on odd sizes: 4x4 instead of 5x5 on 8x8 digits at ``lam = 0.5``).

    Returns:
        ``(y0, y1, x0, x1)`` with half-open ranges.

    Example:
        >>> y0, y1, x0, x1 = cutmix_box(8, 8, 0.5, torch.Generator().manual_seed(12))
        >>> (y1 - y0, x1 - x0)  # centre (3, 3): nothing clipped, so int(8 * sqrt(0.5)) = 5 a side
        (5, 5)
    """
    ratio = math.sqrt(max(0.0, 1.0 - lam))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,), generator=generator).item())
    cx = int(torch.randint(0, width, (1,), generator=generator).item())
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width)
    return y0, y1, x0, x1


def cutmix_batch(
    x: Tensor,
    y: Tensor,
    alpha: float = 1.0,
    num_classes: int | None = None,
    lam: float | None = None,
    perm: Tensor | None = None,
    box: tuple[int, int, int, int] | None = None,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, float, Tensor]:
    """CutMix (Yun et al. 2019): paste a box from ``x[perm]`` into ``x``; targets weighted by area.

    The returned ``lam`` is corrected to the pasted area after clipping at the border:
    ``lam = 1 - box_area / (H * W)``, so target weights always match the pixels.

    Args:
        x: images ``(B, C, H, W)`` (any ``(B, ..., H, W)``).
        y: class indices ``(B,)`` or soft targets ``(B, C)``.
        alpha: Beta(alpha, alpha) parameter for the requested area when ``lam`` and ``box`` are not given.
        num_classes: needed with class indices.
        lam: requested share of the original image kept; drawn if ``None``.
        perm: pairing permutation; drawn if ``None``.
        box: ``(y0, y1, x0, x1)`` to paste; drawn from ``lam`` if ``None``.
        label_smoothing: applied to the targets before mixing.
        generator: source of the draws.

    Returns:
        ``(mixed_x, soft_targets, corrected_lam, perm)``.
    """
    if x.dim() < 3:
        raise ValueError(f"cutmix needs images (B, ..., H, W); got shape {tuple(x.shape)}")
    height, width = x.shape[-2], x.shape[-1]
    if box is None:
        lam = sample_lambda(alpha, generator) if lam is None else float(lam)
        box = cutmix_box(height, width, lam, generator)
    y0, y1, x0, x1 = box
    if not (0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width):
        raise ValueError(f"box={box} lies outside the {height}x{width} image")
    perm = _perm(x.shape[0], perm, generator, x.device)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    t = one_hot_targets(y, num_classes, label_smoothing)
    x_mixed = x.clone()
    x_mixed[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    return x_mixed, t * lam + t[perm] * (1.0 - lam), lam, perm


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

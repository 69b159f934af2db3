"""A small convolutional image classifier that trains on hard or soft targets (MixUp/CutMix ready).

Example:
    >>> model = ImageClassifier(num_classes=10, in_channels=1, image_size=8)
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageClassifier"]


class ImageClassifier(pl.LightningModule):
    """Two conv blocks + MLP head; ``training_step`` accepts class indices ``(B,)`` or soft targets ``(B, C)``.

    Args:
        num_classes: output classes.
        in_channels: image channels.
        image_size: height = width of the input (only used to size the head).
        width: channels of the first conv block (the second has twice as many).
        dropout: dropout before the head.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        label_smoothing: smoothing for hard targets (soft targets are used as given).

    Raises:
        ValueError: ``num_classes < 2`` or a non-positive size.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
        width: int = 32,
        dropout: float = 0.1,
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        if image_size < 4 or width < 1 or in_channels < 1:
            raise ValueError(f"image_size={image_size} must be >= 4 and width, in_channels >= 1")
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(2),  # (B, 2w, 2, 2) whatever the input size
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, C)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if y.dim() == 2:  # soft targets from MixUp/CutMix
            return F.cross_entropy(logits, y.to(logits.dtype))
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = self._loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        labels = y.argmax(-1) if y.dim() == 2 else y
        self.log("val/loss", self._loss(logits, y), prog_bar=True)
        self.log("val/acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

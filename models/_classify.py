"""Evaluation steps shared by the kit's sequence classifiers (the kit's own backbone and a transformers one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection

__all__ = ["ClassifierEvalSteps"]


class ClassifierEvalSteps:
    """LightningModule mixin: validation and test of a classifier that returns ``(B, num_classes)`` logits.

    The module holds ``val_loss`` (a ``MeanMetric``) and ``val_metrics`` / ``test_metrics`` (``MetricCollection``s);
    ``val/loss`` and ``test/loss`` are the mean cross-entropy, logged with the collection's metrics.
    """

    def _eval(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection) -> None:
        idx, y = batch
        logits = self(idx).float()
        self.val_loss.update(F.cross_entropy(logits, y), weight=y.numel())
        metrics.update(logits, y)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval(batch, self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval(batch, self.test_metrics)

    def _eval_end(self, metrics: MetricCollection, stage: str) -> None:
        self.log_dict(metrics.compute(), prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/loss", self.val_loss.compute(), sync_dist=True)
        metrics.reset()
        self.val_loss.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_end(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.test_metrics, "test")
